package provider

import (
	"bytes"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestEncryptSizes: UnknownSize streams, other negative sizes and sizes
// past the GCM limit are refused before anything is written.
func TestEncryptSizes(t *testing.T) {
	a := openAdmin(t)
	kek := makeKEK(t, a, uniqueName(t, "sizes"), KEKAES128)
	p := openProvider(t)
	kek = mustKEK(t, p, kek)
	to := []*KEK{kek}

	var out bytes.Buffer
	require.NoError(t, p.Encrypt(bg, &out, strings.NewReader("streamed"), UnknownSize, to, Options{}))
	var pt bytes.Buffer
	require.NoError(t, p.Decrypt(bg, &pt, bytes.NewReader(out.Bytes()), int64(out.Len()), Options{}))
	assert.Equal(t, "streamed", pt.String())

	for _, size := range []int64{-2, -1 << 40, MaxMessageSize + 1} {
		out.Reset()
		err := p.Encrypt(bg, &out, strings.NewReader("x"), size, to, Options{})
		require.ErrorIs(t, err, ErrInvalidInput, "size %d", size)
		assert.Zero(t, out.Len(), "size %d: nothing written", size)
	}
	assert.Equal(t, int64(1<<39-256)/8, MaxMessageSize, "NIST SP 800-38D §5.2.1.1")
}
