package tink

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"testing"

	"github.com/hsmkeys/hsmkeys/integrations/internal/softhsmtest"
	"github.com/hsmkeys/hsmkeys/provider"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/tink-crypto/tink-go/v2/aead"
	"github.com/tink-crypto/tink-go/v2/core/registry"
	"github.com/tink-crypto/tink-go/v2/keyset"
)

// The tests run against a real SoftHSM token that TestMain makes, with two
// RSA KEKs.
var (
	bg  = context.Background()
	tok *softhsmtest.Token
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "hsmkeys-tink-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	tok = softhsmtest.New(dir, "hsmkeys-tink", nil)
	for _, name := range []string{"tk-a", "tk-b"} {
		if tok.Err == nil {
			_, tok.Err = tok.CreateKEK(bg, name)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func openProvider(t *testing.T) *provider.Provider {
	t.Helper()
	tok.Need(t)
	p, err := provider.Open(bg, tok.Config())
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, p.Close()) })
	return p
}

func TestAEAD(t *testing.T) {
	p := openProvider(t)
	a, err := NewAEAD(bg, p, "tk-a")
	require.NoError(t, err)
	for _, ad := range [][]byte{nil, []byte("row 7")} {
		ct, err := a.Encrypt([]byte("secret"), ad)
		require.NoError(t, err)
		ct2, err := a.Encrypt([]byte("secret"), ad)
		require.NoError(t, err)
		assert.NotEqual(t, ct, ct2, "two encryptions are alike")
		pt, err := a.Decrypt(ct, ad)
		require.NoError(t, err)
		assert.Equal(t, "secret", string(pt))
		_, err = a.Decrypt(ct, append(bytes.Clone(ad), '!'))
		require.ErrorIs(t, err, provider.ErrContext, "other associated data")
		bad := bytes.Clone(ct)
		bad[len(bad)-1] ^= 1
		_, err = a.Decrypt(bad, ad)
		require.Error(t, err, "a forged tag")
	}
	ctx, cancel := context.WithCancel(bg)
	cancel()
	_, err = a.EncryptWithContext(ctx, []byte("x"), nil)
	require.ErrorIs(t, err, context.Canceled)

	b, err := NewAEAD(bg, p, "tk-b")
	require.NoError(t, err)
	ct, err := b.Encrypt([]byte("for b"), nil)
	require.NoError(t, err)
	_, err = a.Decrypt(ct, nil)
	require.ErrorIs(t, err, provider.ErrNotFound, "another kek's ciphertext")
	_, err = NewAEAD(bg, p, "no-such-kek")
	require.ErrorIs(t, err, provider.ErrNotFound)
}

func TestClient(t *testing.T) {
	p := openProvider(t)
	c, err := NewClient("", p)
	require.NoError(t, err)
	assert.True(t, c.Supported("hsmkeys://tk-a"))
	assert.True(t, c.Supported("HSMKEYS://tk-a"))
	assert.False(t, c.Supported("gcp-kms://projects/p/locations/l/keyRings/r/cryptoKeys/k"))
	for _, bad := range []string{"hsmkeys://", "hsmkeys://tk-a?pin=1", "aws-kms://x"} {
		_, err := c.GetAEAD(bad)
		require.ErrorIs(t, err, ErrKeyURI, bad)
	}
	_, err = NewClient("gcp-kms://", p)
	require.ErrorIs(t, err, ErrKeyURI)
	only, err := NewClient("hsmkeys://tk-b", p)
	require.NoError(t, err)
	assert.False(t, only.Supported("hsmkeys://tk-a"))

	registry.RegisterKMSClient(c)
	t.Cleanup(registry.ClearKMSClients)

	// Tink's own KMS envelope over the client's AEAD: a Tink DEK per
	// message, wrapped by an hsmkeys envelope.
	kc, err := registry.GetKMSClient("hsmkeys://tk-a")
	require.NoError(t, err)
	remote, err := kc.GetAEAD("hsmkeys://tk-a")
	require.NoError(t, err)
	env := aead.NewKMSEnvelopeAEAD2(aead.AES256GCMKeyTemplate(), remote)
	ct, err := env.Encrypt([]byte("tink envelope"), []byte("ad"))
	require.NoError(t, err)
	pt, err := env.Decrypt(ct, []byte("ad"))
	require.NoError(t, err)
	assert.Equal(t, "tink envelope", string(pt))

	// A KMS envelope key template naming the KEK by URI: Tink finds the
	// client in the registry.
	tmpl, err := aead.CreateKMSEnvelopeAEADKeyTemplate("hsmkeys://tk-a", aead.AES256GCMKeyTemplate())
	require.NoError(t, err)
	h, err := keyset.NewHandle(tmpl)
	require.NoError(t, err)
	prim, err := aead.New(h)
	require.NoError(t, err)
	ct, err = prim.Encrypt([]byte("by template"), nil)
	require.NoError(t, err)
	pt, err = prim.Decrypt(ct, nil)
	require.NoError(t, err)
	assert.Equal(t, "by template", string(pt))

	// A Tink keyset encrypted under the KEK, and read back.
	ks, err := keyset.NewHandle(aead.AES256GCMKeyTemplate())
	require.NoError(t, err)
	var buf bytes.Buffer
	require.NoError(t, ks.WriteWithAssociatedData(keyset.NewBinaryWriter(&buf), remote, []byte("keyset 1")))
	back, err := keyset.ReadWithAssociatedData(keyset.NewBinaryReader(bytes.NewReader(buf.Bytes())), remote, []byte("keyset 1"))
	require.NoError(t, err)
	assert.Equal(t, ks.KeysetInfo().GetPrimaryKeyId(), back.KeysetInfo().GetPrimaryKeyId())
	_, err = keyset.ReadWithAssociatedData(keyset.NewBinaryReader(bytes.NewReader(buf.Bytes())), remote, []byte("keyset 2"))
	require.Error(t, err)
}
