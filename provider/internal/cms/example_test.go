package cms_test

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"fmt"
	"io"
	"log"
	"slices"

	"github.com/hsmkeys/hsmkeys/provider/internal/cms"
)

// This example streams a message of unknown length. Go's AES-GCM stands in
// for the HSM, which would return the ciphertext chunk by chunk and the
// tag at the end.
func Example_streaming() {
	cek := bytes.Repeat([]byte{0x42}, 32)
	h := &cms.Header{
		Recipients: []cms.Recipient{&cms.KEKRecipient{
			KeyID:        []byte("backup-kek-1"),
			WrapAlg:      cms.OIDAES256Wrap,
			EncryptedKey: make([]byte, 40), // from the HSM's C_WrapKey
		}},
		Algorithm: cms.OIDAES256GCM,
		Nonce:     make([]byte, 12),
	}
	ctx, err := cms.EncryptionContextAttr(map[string]string{"file": "db.dump"})
	if err != nil {
		log.Fatal(err)
	}
	h.AuthAttrs = []cms.Attribute{cms.ContentTypeAttr(cms.OIDData), ctx}

	block, _ := aes.NewCipher(cek)
	gcm, _ := cipher.NewGCM(block)
	sealed := gcm.Seal(nil, h.Nonce, []byte("a large file"), h.AAD())
	ciphertext, tag := sealed[:len(sealed)-16], sealed[len(sealed)-16:]

	var out bytes.Buffer
	if err := cms.WriteHeader(&out, h, -1); err != nil {
		log.Fatal(err)
	}
	for c := range slices.Chunk(ciphertext, 5) {
		if err := cms.WriteChunk(&out, c); err != nil {
			log.Fatal(err)
		}
	}
	if err := cms.WriteTrailer(&out, h, -1, tag); err != nil {
		log.Fatal(err)
	}

	m, err := cms.Parse(bytes.NewReader(out.Bytes()), int64(out.Len()))
	if err != nil {
		log.Fatal(err)
	}
	ct, _ := io.ReadAll(m.Content())
	pt, err := gcm.Open(nil, m.Header.Nonce, append(ct, m.MAC...), m.Header.AAD())
	if err != nil {
		log.Fatal(err)
	}
	ec, _ := m.Header.EncryptionContext()
	fmt.Printf("%s, %d recipient, context %v\n", pt, len(m.Header.Recipients), ec)
	// Output: a large file, 1 recipient, context map[file:db.dump]
}
