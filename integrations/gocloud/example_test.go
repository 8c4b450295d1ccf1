package gocloud_test

import (
	"context"
	"log"

	_ "github.com/hsmkeys/hsmkeys/integrations/gocloud" // registers hsmkeys://
	"gocloud.dev/secrets"
)

// The token comes from the query, or from HSMKEYS_MODULE, HSMKEYS_TOKEN
// (or HSMKEYS_URI) and HSMKEYS_PIN_FILE; never a PIN in the URL.
func Example() {
	ctx := context.Background()
	keeper, err := secrets.OpenKeeper(ctx,
		"hsmkeys://app-kek?module=/usr/lib/softhsm/libsofthsm2.so&token=hsmkeys&pin_file=/run/secrets/hsm-pin")
	if err != nil {
		log.Fatal(err)
	}
	defer keeper.Close() // logs out; destroys any session key left

	ciphertext, err := keeper.Encrypt(ctx, []byte("db password")) // a CMS message
	if err != nil {
		log.Fatal(err)
	}
	plaintext, err := keeper.Decrypt(ctx, ciphertext)
	if err != nil {
		log.Fatal(err)
	}
	_ = plaintext
}
