package reliability

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"testing"

	"github.com/hsmkeys/hsmkeys/provider"
	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// TestDecryptStreamFails: a device error in the middle of the decryption
// of a message beyond 4 MiB, which Decrypt checks in a first pass (AES-CTR
// and AES-GCM on the token, C_EncryptUpdate) and writes in a second (AES-CTR
// again). The error is the token's, never ErrAuthentication, and whatever
// dst received is the message's own plaintext. A failure in the first pass
// leaves dst empty; Decrypt's documentation ("On error, dst has received
// nothing") promises that for the second pass too, which a pass that
// streams to dst cannot keep.
func TestDecryptStreamFails(t *testing.T) {
	need(t)
	defer goleak.VerifyNone(t)
	ctx := context.Background()
	keks := newKEKs(t, kekSpec{"stream-aes", provider.KEKAES256})
	p := open(t, 4)
	kek, err := p.KEKByID(ctx, keks[0].ID)
	require.NoError(t, err)
	pt := make([]byte, 5<<20)
	_, _ = rand.Read(pt)
	var msg bytes.Buffer
	require.NoError(t, p.Encrypt(ctx, &msg, bytes.NewReader(pt), int64(len(pt)), []*provider.KEK{kek}, provider.Options{}))
	decrypt := func() (*bytes.Buffer, error) {
		var out bytes.Buffer
		err := p.Decrypt(ctx, &out, bytes.NewReader(msg.Bytes()), int64(msg.Len()), provider.Options{})
		return &out, err
	}

	// The C_EncryptUpdate calls of one decryption: two per part in the
	// first pass, one in the second.
	st := snapshot(t)
	out, err := decrypt()
	require.NoError(t, err)
	require.True(t, bytes.Equal(pt, out.Bytes()), "decrypt without faults")
	calls := snapshot(t).Calls["C_EncryptUpdate"] - st.Calls["C_EncryptUpdate"]
	require.Positive(t, calls)

	for _, tc := range []struct {
		name    string
		from    uint64
		nothing bool // dst must have received nothing
	}{
		{"first pass", calls / 3, true},
		{"second pass", calls * 5 / 6, false}, // Decrypt: a failure in the second pass leaves an authenticated prefix
	} {
		t.Run(tc.name, func(t *testing.T) {
			setFaults(t, fmt.Sprintf("fail C_EncryptUpdate CKR_DEVICE_ERROR from %d count 1", tc.from))
			out, err := decrypt()
			setFaults(t)
			code, ok := tokenCode(err)
			require.True(t, ok && code == pkcs11.CKR_DEVICE_ERROR, "%v: want a *provider.TokenError with CKR_DEVICE_ERROR", err)
			assert.NotErrorIs(t, err, provider.ErrAuthentication)
			assert.True(t, bytes.HasPrefix(pt, out.Bytes()), "dst received %d bytes that are not the message's plaintext", out.Len())
			if tc.nothing {
				assert.Zero(t, out.Len(), `dst received plaintext, then Decrypt failed; its documentation says "On error, dst has received nothing"`)
			}

			out, err = decrypt()
			require.NoError(t, err, "decrypt once the fault is gone")
			assert.True(t, bytes.Equal(pt, out.Bytes()))
		})
	}
}
