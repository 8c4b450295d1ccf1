package provider

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestInspectKey: the manifest of an exported key, read on the token, is
// the provider's own type and says what the key is; Inspect alone has none.
func TestInspectKey(t *testing.T) {
	a := openAdmin(t)
	kek := makeKEK(t, a, uniqueName(t, "inspect"), KEKAES256)
	p := openProvider(t)
	kek = mustKEK(t, p, kek)
	k, err := p.Generate(bg, AES256)
	require.NoError(t, err)
	ectx := map[string]string{"tenant": "a"}
	blob, err := p.Export(bg, k, []*KEK{kek}, Options{Context: ectx, Armor: true})
	require.NoError(t, err)

	info, err := Inspect(blob)
	require.NoError(t, err)
	assert.Nil(t, info.Manifest, "without the token the manifest is unreadable")

	before := p.keyCount()
	info, err = p.InspectKey(bg, blob, Options{Context: ectx})
	require.NoError(t, err)
	assert.Equal(t, before, p.keyCount(), "the imported key is destroyed")
	assert.Equal(t, "key", info.Kind)
	assert.Equal(t, "pem", info.Format)
	m := info.Manifest
	require.NotNil(t, m)
	assert.Equal(t, 2, m.Version)
	assert.Equal(t, AES256, m.Algorithm)
	assert.Equal(t, k.ID(), m.KeyID)
	assert.Equal(t, k.Created(), m.Created)
	assert.Equal(t, ExportTrusted, m.Policy)
	assert.Len(t, m.KCV, 3)

	_, err = p.InspectKey(bg, blob, Options{})
	require.ErrorIs(t, err, ErrContext)

	var msg bytes.Buffer
	require.NoError(t, p.Encrypt(bg, &msg, bytes.NewReader(make([]byte, 1000)), UnknownSize, []*KEK{kek}, Options{}))
	_, err = p.InspectKey(bg, msg.Bytes(), Options{})
	var ke *KindError
	require.ErrorAs(t, err, &ke)
	assert.Equal(t, "message", ke.Kind)
}
