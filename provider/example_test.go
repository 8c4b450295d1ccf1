package provider_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"strings"

	"github.com/hsmkeys/hsmkeys/provider"
)

// A session key: generated on the token, used there, destroyed.
func ExampleProvider_Generate() {
	ctx := context.Background()
	p, err := provider.Open(ctx, provider.Config{
		URI: "pkcs11:token=hsmkeys?module-path=/usr/lib/softhsm/libsofthsm2.so",
		PIN: provider.PINFile(os.Getenv("HSMKEYS_PIN_FILE")),
	})
	if err != nil {
		log.Fatal(err)
	}
	defer p.Close()

	k, err := p.Generate(ctx, provider.AES256)
	if err != nil {
		log.Fatal(err)
	}
	defer k.Destroy(ctx)
	sealed, err := k.Seal(ctx, []byte("hello"), []byte("header"))
	if err != nil {
		log.Fatal(err)
	}
	plain, err := k.Open(ctx, sealed, []byte("header"))
	switch {
	case errors.Is(err, provider.ErrAuthentication):
		log.Fatal("tampered")
	case errors.Is(err, provider.ErrKeyLost):
		log.Fatal("the token dropped the key's session; the key is gone")
	case err != nil:
		log.Fatal(err)
	}
	fmt.Printf("%s\n", plain)
}

// Keeping a key for later: exported wrapped under the newest version of a
// KEK, imported into the token again.
func ExampleProvider_Export() {
	ctx := context.Background()
	p, err := provider.Open(ctx, provider.Config{
		Module:     "/usr/lib/softhsm/libsofthsm2.so",
		TokenLabel: "hsmkeys",
		PIN:        provider.PINEnv("HSMKEYS_PIN"),
	})
	if err != nil {
		log.Fatal(err)
	}
	defer p.Close()
	kek, err := p.KEK(ctx, "backup")
	if err != nil {
		log.Fatal(err) // ErrNotFound, or ErrPolicy naming what is wrong with it
	}
	k, err := p.Generate(ctx, provider.AES256)
	if err != nil {
		log.Fatal(err)
	}
	blob, err := p.Export(ctx, k, []*provider.KEK{kek}, provider.Options{
		Context: map[string]string{"service": "billing"},
		Armor:   true,
	})
	if err != nil {
		log.Fatal(err)
	}
	back, err := p.Import(ctx, blob, provider.Options{Context: map[string]string{"service": "billing"}})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(back.ID() == k.ID())
}

// A stream of any size, for one or more recipients; a fresh session key
// per message.
func ExampleProvider_Encrypt() {
	ctx := context.Background()
	p, err := provider.Open(ctx, provider.Config{
		URI: "pkcs11:token=hsmkeys?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/secrets/hsm-pin",
	})
	if err != nil {
		log.Fatal(err)
	}
	defer p.Close()
	kek, err := p.KEK(ctx, "partner") // an RSA public key imported with hsmkeys kek import-public
	if err != nil {
		log.Fatal(err)
	}
	var msg bytes.Buffer
	src := strings.NewReader("a report for the partner")
	if err := p.Encrypt(ctx, &msg, src, int64(src.Len()), []*provider.KEK{kek}, provider.Options{}); err != nil {
		log.Fatal(err)
	}
	// The partner opens msg with: openssl cms -decrypt -inform DER -inkey key.pem
	fmt.Println(msg.Len() > 0)
}
