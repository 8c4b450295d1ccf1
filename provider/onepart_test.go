package provider

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestEncryptOnePart: a message of at most one part is encrypted with one
// C_Encrypt (TestCallCounts counts it), in definite-length DER (size
// known) and indefinite-length BER (size -1); both decrypt, with Decrypt
// and with openssl cms, at the sizes around the part size. A size that
// differs from the input is refused.
func TestEncryptOnePart(t *testing.T) {
	needOpenSSL(t)
	dir := t.TempDir()
	a := openAdmin(t)
	kekValue := make([]byte, 32)
	_, _ = rand.Read(kekValue)
	kekFile := filepath.Join(dir, "kek")
	require.NoError(t, os.WriteFile(kekFile, kekValue, 0o600))
	kek, err := a.ImportKEKWith(bg, uniqueName(t, "onepart"), kekFile, KEKOptions{AllowExposedAtRest: true})
	require.NoError(t, err)
	t.Cleanup(func() { _ = a.DestroyKEK(bg, kek.ID) })
	require.NoError(t, a.Close())
	const part = 4 << 10
	p := openProvider(t, func(c *Config) { c.ChunkSize = part })
	k, err := p.KEKByID(bg, kek.ID)
	require.NoError(t, err)
	for _, size := range []int{0, 1, 16, part - 1, part, part + 1, 3*part + 5} {
		for _, known := range []bool{true, false} {
			t.Run(fmt.Sprintf("%d bytes, size known %v", size, known), func(t *testing.T) {
				msg := make([]byte, size)
				_, _ = rand.Read(msg)
				announced := int64(-1)
				if known {
					announced = int64(size)
				}
				var out, got bytes.Buffer
				require.NoError(t, p.Encrypt(bg, &out, bytes.NewReader(msg), announced, []*KEK{k}, Options{}))
				require.NoError(t, p.Decrypt(bg, &got, bytes.NewReader(out.Bytes()), int64(out.Len()), Options{}))
				require.True(t, bytes.Equal(msg, got.Bytes()))
				in, dec := filepath.Join(dir, "msg.der"), filepath.Join(dir, "dec")
				require.NoError(t, os.WriteFile(in, out.Bytes(), 0o600))
				openssl(t, "cms", "-decrypt", "-binary", "-inform", "DER", "-in", in, "-out", dec,
					"-secretkey", hex.EncodeToString(kekValue), "-secretkeyid", hex.EncodeToString(kek.ID))
				b, err := os.ReadFile(dec)
				require.NoError(t, err)
				require.True(t, bytes.Equal(msg, b), "openssl")
			})
		}
	}
	for _, c := range []struct{ in, announced int }{{10, 11}, {10, 9}, {0, 1}} {
		var out bytes.Buffer
		err := p.Encrypt(bg, &out, bytes.NewReader(make([]byte, c.in)), int64(c.announced), []*KEK{k}, Options{})
		require.ErrorIs(t, err, ErrInvalidInput, "%d bytes announced as %d", c.in, c.announced)
	}
}
