package provider

import (
	"bytes"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestOptionsShared: one Options value serves a write and the read of
// what it wrote; Armor shapes the writers' output only, and the readers
// take DER or PEM whatever it says.
func TestOptionsShared(t *testing.T) {
	a := openAdmin(t)
	kek := makeKEK(t, a, uniqueName(t, "opts"), KEKAES128)
	p := openProvider(t)
	kek = mustKEK(t, p, kek)
	to := []*KEK{kek}
	ectx := map[string]string{"tenant": "a"}
	for _, armor := range []bool{false, true} {
		o := Options{Context: ectx, Armor: armor}
		var msg bytes.Buffer
		require.NoError(t, p.Encrypt(bg, &msg, strings.NewReader("shared"), UnknownSize, to, o))
		assert.Equal(t, armor, bytes.HasPrefix(msg.Bytes(), []byte("-----BEGIN CMS-----")))
		for _, read := range []Options{{Context: ectx, Armor: true}, {Context: ectx}} {
			var pt bytes.Buffer
			require.NoError(t, p.Decrypt(bg, &pt, bytes.NewReader(msg.Bytes()), int64(msg.Len()), read), "written armor=%v, read %+v", armor, read)
			assert.Equal(t, "shared", pt.String())
		}

		k, err := p.Generate(bg, AES128)
		require.NoError(t, err)
		blob, err := p.Export(bg, k, to, o)
		require.NoError(t, err)
		for _, read := range []Options{{Context: ectx, Armor: true}, {Context: ectx}} {
			back, err := p.Import(bg, blob, read)
			require.NoError(t, err)
			assert.Equal(t, k.ID(), back.ID())
		}
		// Rewrap: PEM when asked or when the input was PEM.
		out, err := p.Rewrap(bg, blob, to, Options{Context: ectx})
		require.NoError(t, err)
		assert.Equal(t, armor, bytes.HasPrefix(out, []byte("-----BEGIN CMS-----")))
		out, err = p.Rewrap(bg, blob, to, Options{Context: ectx, Armor: true})
		require.NoError(t, err)
		assert.True(t, bytes.HasPrefix(out, []byte("-----BEGIN CMS-----")))
		_, err = p.Import(bg, out, Options{})
		require.ErrorIs(t, err, ErrContext, "the context stays bound through Rewrap")
	}
}
