package tink_test

import (
	"context"
	"log"

	hsmtink "github.com/hsmkeys/hsmkeys/integrations/tink"
	"github.com/hsmkeys/hsmkeys/provider"
	"github.com/tink-crypto/tink-go/v2/aead"
	"github.com/tink-crypto/tink-go/v2/core/registry"
	"github.com/tink-crypto/tink-go/v2/keyset"
)

func Example() {
	ctx := context.Background()
	p, err := provider.Open(ctx, provider.Config{
		URI: "pkcs11:token=hsmkeys?module-path=/usr/lib/softhsm/libsofthsm2.so",
		PIN: provider.PINFile("/run/secrets/hsm-pin"),
	})
	if err != nil {
		log.Fatal(err)
	}
	defer p.Close()
	client, err := hsmtink.NewClient("hsmkeys://", p)
	if err != nil {
		log.Fatal(err)
	}
	registry.RegisterKMSClient(client)

	// A Tink KMS envelope: a Tink AES-GCM key per message, wrapped by an
	// hsmkeys envelope under the KEK "app-kek".
	tmpl, err := aead.CreateKMSEnvelopeAEADKeyTemplate("hsmkeys://app-kek", aead.AES256GCMKeyTemplate())
	if err != nil {
		log.Fatal(err)
	}
	h, err := keyset.NewHandle(tmpl)
	if err != nil {
		log.Fatal(err)
	}
	a, err := aead.New(h)
	if err != nil {
		log.Fatal(err)
	}
	ct, err := a.Encrypt([]byte("record"), []byte("table users, row 7"))
	if err != nil {
		log.Fatal(err)
	}

	// Or the hsmkeys AEAD itself: one token envelope per call.
	kek, err := client.GetAEAD("hsmkeys://app-kek")
	if err != nil {
		log.Fatal(err)
	}
	sealed, err := kek.Encrypt([]byte("small secret"), []byte("ad"))
	if err != nil {
		log.Fatal(err)
	}
	_, _ = ct, sealed
}
