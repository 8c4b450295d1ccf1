package kmswrap_test

import (
	"context"
	"log"

	wrapping "github.com/hashicorp/go-kms-wrapping/v2"
	"github.com/hsmkeys/hsmkeys/integrations/kmswrap"
)

func Example() {
	ctx := context.Background()
	w := kmswrap.NewWrapper()
	// module, token and pin_file may also come from HSMKEYS_MODULE,
	// HSMKEYS_TOKEN (or HSMKEYS_URI) and HSMKEYS_PIN_FILE.
	if _, err := w.SetConfig(ctx, wrapping.WithConfigMap(map[string]string{
		"kek":      "vault-seal",
		"module":   "/usr/lib/softhsm/libsofthsm2.so",
		"token":    "hsmkeys",
		"pin_file": "/run/secrets/hsm-pin",
	})); err != nil {
		log.Fatal(err)
	}
	defer w.Finalize(ctx)

	blob, err := w.Encrypt(ctx, []byte("root key"), wrapping.WithAad([]byte("core/seal")))
	if err != nil {
		log.Fatal(err)
	}
	// blob.KeyInfo.KeyId is the KEK version; after a rotation KeyId differs
	// and the host rewraps.
	current, err := w.KeyId(ctx)
	if err != nil {
		log.Fatal(err)
	}
	plaintext, err := w.Decrypt(ctx, blob, wrapping.WithAad([]byte("core/seal")))
	if err != nil {
		log.Fatal(err)
	}
	_, _ = current, plaintext
}
