package kmswrap

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"

	wrapping "github.com/hashicorp/go-kms-wrapping/v2"
	"github.com/hashicorp/go-kms-wrapping/v2/extras/multi"
	"github.com/hashicorp/go-kms-wrapping/v2/extras/structwrapping"
	"github.com/hsmkeys/hsmkeys/integrations/internal/softhsmtest"
	"github.com/hsmkeys/hsmkeys/provider"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The tests run against a real SoftHSM token that TestMain makes, with RSA
// KEKs.
var (
	bg   = context.Background()
	tok  *softhsmtest.Token
	keks = map[string]*provider.KEK{}
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "hsmkeys-kmswrap-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	tok = softhsmtest.New(dir, "hsmkeys-kmswrap", nil)
	for _, name := range []string{"kw-a", "kw-b", "kw-rotate"} {
		if tok.Err == nil {
			keks[name], tok.Err = tok.CreateKEK(bg, name)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// configMap names the test token and kek without the environment.
func configMap(kek string) map[string]string {
	return map[string]string{"kek": kek, "module": tok.Module, "token": tok.Label, "pin_file": tok.PINFile}
}

func newWrapper(t *testing.T, kek string) *Wrapper {
	t.Helper()
	tok.Need(t)
	w := NewWrapper()
	_, err := w.SetConfig(bg, wrapping.WithConfigMap(configMap(kek)), wrapping.WithDisallowEnvVars(true))
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, w.Finalize(bg)) })
	return w
}

func TestEncryptDecrypt(t *testing.T) {
	w := newWrapper(t, "kw-a")
	typ, err := w.Type(bg)
	require.NoError(t, err)
	assert.Equal(t, WrapperType, typ)
	id, err := w.KeyId(bg)
	require.NoError(t, err)
	assert.Equal(t, hex.EncodeToString(keks["kw-a"].ID), id)

	for _, aad := range [][]byte{nil, []byte("sys/seal")} {
		blob, err := w.Encrypt(bg, []byte("root key"), wrapping.WithAad(aad))
		require.NoError(t, err)
		assert.Equal(t, id, blob.KeyInfo.KeyId)
		assert.Equal(t, MechanismCMS, blob.KeyInfo.Mechanism)
		assert.Empty(t, blob.Iv)
		assert.Empty(t, blob.KeyInfo.WrappedKey)
		pt, err := w.Decrypt(bg, blob, wrapping.WithAad(aad))
		require.NoError(t, err)
		assert.Equal(t, "root key", string(pt))

		// Other associated data fails.
		_, err = w.Decrypt(bg, blob, wrapping.WithAad(append(bytes.Clone(aad), 'x')))
		require.ErrorIs(t, err, provider.ErrContext)
		// The ciphertext is the whole story: KeyInfo is not needed.
		pt, err = w.Decrypt(bg, &wrapping.BlobInfo{Ciphertext: blob.Ciphertext}, wrapping.WithAad(aad))
		require.NoError(t, err)
		assert.Equal(t, "root key", string(pt))
	}
	_, err = w.Decrypt(bg, nil)
	require.ErrorIs(t, err, wrapping.ErrInvalidParameter)
	_, err = w.Decrypt(bg, &wrapping.BlobInfo{Ciphertext: []byte("junk")})
	require.ErrorIs(t, err, provider.ErrMalformed)

	// Another KEK's wrapper does not open it.
	other := newWrapper(t, "kw-b")
	blob, err := w.Encrypt(bg, []byte("for a"))
	require.NoError(t, err)
	_, err = other.Decrypt(bg, blob)
	require.ErrorIs(t, err, provider.ErrNotFound)
}

func TestSetConfig(t *testing.T) {
	tok.Need(t)
	t.Run("environment", func(t *testing.T) {
		tok.Setenv(t)
		w := NewWrapper()
		cfg, err := w.SetConfig(bg, wrapping.WithConfigMap(map[string]string{"kek": "kw-a"}))
		require.NoError(t, err)
		defer w.Finalize(bg)
		assert.Equal(t, "kw-a", cfg.Metadata["kek"])
		assert.Equal(t, hex.EncodeToString(keks["kw-a"].ID), cfg.Metadata["key_id"])
		assert.Equal(t, tok.Label, cfg.Metadata["token"])
		for _, v := range cfg.Metadata {
			assert.NotContains(t, v, softhsmtest.UserPIN)
		}
	})
	t.Run("environment disallowed", func(t *testing.T) {
		tok.Setenv(t)
		_, err := NewWrapper().SetConfig(bg, wrapping.WithConfigMap(map[string]string{"kek": "kw-a"}), wrapping.WithDisallowEnvVars(true))
		require.Error(t, err, "no pin without the environment")
	})
	t.Run("refused", func(t *testing.T) {
		tok.Setenv(t)
		for _, m := range []map[string]string{
			{"kek": "kw-a", "pin": softhsmtest.UserPIN},
			{"kek": "kw-a", "pin_value": softhsmtest.UserPIN},
			{"kek": "kw-a", "uri": "pkcs11:token=" + tok.Label + "?pin-value=" + softhsmtest.UserPIN},
			{"token": tok.Label},
		} {
			_, err := NewWrapper().SetConfig(bg, wrapping.WithConfigMap(m))
			require.Error(t, err, "%v", m)
			assert.NotContains(t, err.Error(), softhsmtest.UserPIN)
		}
		_, err := NewWrapper().SetConfig(bg, wrapping.WithConfigMap(map[string]string{"kek": "no-such"}))
		require.ErrorIs(t, err, provider.ErrNotFound)
	})
	t.Run("not configured", func(t *testing.T) {
		w := NewWrapper()
		_, err := w.Encrypt(bg, []byte("x"))
		require.ErrorIs(t, err, ErrNotConfigured)
		_, err = w.KeyId(bg)
		require.ErrorIs(t, err, ErrNotConfigured)
		require.NoError(t, w.Finalize(bg))
	})
}

// TestLibraryHelpers runs go-kms-wrapping's own helpers over the wrapper:
// the pooled wrapper that picks a wrapper by a blob's key ID, and struct
// wrapping, which marshals blobs as protobuf.
func TestLibraryHelpers(t *testing.T) {
	a, b := newWrapper(t, "kw-a"), newWrapper(t, "kw-b")
	pooled, err := multi.NewPooledWrapper(bg, a)
	require.NoError(t, err)
	ok, err := pooled.AddWrapper(bg, b)
	require.NoError(t, err)
	require.True(t, ok)
	assert.ElementsMatch(t, []string{hex.EncodeToString(keks["kw-a"].ID), hex.EncodeToString(keks["kw-b"].ID)}, pooled.AllKeyIds())
	fromB, err := b.Encrypt(bg, []byte("sealed by b"))
	require.NoError(t, err)
	pt, err := pooled.Decrypt(bg, fromB)
	require.NoError(t, err, "the pool finds b by the blob's key id")
	assert.Equal(t, "sealed by b", string(pt))
	fromPool, err := pooled.Encrypt(bg, []byte("sealed by a"))
	require.NoError(t, err)
	pt, err = a.Decrypt(bg, fromPool)
	require.NoError(t, err)
	assert.Equal(t, "sealed by a", string(pt))

	type record struct {
		Secret   []byte             `wrapping:"pt,secret"`
		Token    string             `wrapping:"pt,token"`
		SecretCT *wrapping.BlobInfo `wrapping:"ct,secret"`
		TokenCT  []byte             `wrapping:"ct,token"`
	}
	r := &record{Secret: []byte("s3cr3t"), Token: "t0k3n"}
	require.NoError(t, structwrapping.WrapStruct(bg, a, r))
	require.NotNil(t, r.SecretCT)
	require.NotEmpty(t, r.TokenCT)
	r.Secret, r.Token = nil, ""
	require.NoError(t, structwrapping.UnwrapStruct(bg, a, r))
	assert.Equal(t, "s3cr3t", string(r.Secret))
	assert.Equal(t, "t0k3n", r.Token)
}

// hsmkeys builds the hsmkeys command (in the core module).
func hsmkeys(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(tok.Dir, "hsmkeys")
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
	out, err := exec.Command(gobin, "build", "-C", "../..", "-o", bin, "./cmd/hsmkeys").CombinedOutput()
	require.NoError(t, err, "go build: %s", out)
	return bin
}

// TestRotation: a new version of the KEK, made by another process (the
// hsmkeys command) while the wrapper is open, changes KeyId; new blobs go
// to it, old ones still decrypt, and the CLI decrypts a blob's ciphertext.
func TestRotation(t *testing.T) {
	w := newWrapper(t, "kw-rotate")
	bin := hsmkeys(t)
	v1, err := w.KeyId(bg)
	require.NoError(t, err)
	old, err := w.Encrypt(bg, []byte("v1 secret"), wrapping.WithAad([]byte("path")))
	require.NoError(t, err)

	soPIN := filepath.Join(t.TempDir(), "so.pin")
	require.NoError(t, os.WriteFile(soPIN, []byte(softhsmtest.SOPIN+"\n"), 0o600))
	cmd := exec.Command(bin, "kek", "create", "--label", "kw-rotate", "--type", "rsa2048", "--so-pin-file", soPIN)
	cmd.Env = append(os.Environ(), "HSMKEYS_MODULE="+tok.SoftHSM, "HSMKEYS_TOKEN="+tok.Label, "HSMKEYS_PIN_FILE="+tok.PINFile)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "hsmkeys kek create: %s", out)

	v2, err := w.KeyId(bg)
	require.NoError(t, err)
	require.NotEqual(t, v1, v2, "KeyId after a rotation")
	fresh, err := w.Encrypt(bg, []byte("v2 secret"))
	require.NoError(t, err)
	assert.Equal(t, v2, fresh.KeyInfo.KeyId)
	pt, err := w.Decrypt(bg, old, wrapping.WithAad([]byte("path")))
	require.NoError(t, err)
	assert.Equal(t, "v1 secret", string(pt))

	// The CLI opens the ciphertext, with the associated data as context.
	in, dec := filepath.Join(t.TempDir(), "blob"), filepath.Join(t.TempDir(), "dec")
	require.NoError(t, os.WriteFile(in, old.Ciphertext, 0o600))
	cmd = exec.Command(bin, "decrypt", "-i", in, "-o", dec, "--context", "aad="+base64.StdEncoding.EncodeToString([]byte("path")))
	cmd.Env = append(os.Environ(), "HSMKEYS_MODULE="+tok.SoftHSM, "HSMKEYS_TOKEN="+tok.Label, "HSMKEYS_PIN_FILE="+tok.PINFile)
	out, err = cmd.CombinedOutput()
	require.NoError(t, err, "hsmkeys decrypt: %s", out)
	got, err := os.ReadFile(dec)
	require.NoError(t, err)
	assert.Equal(t, "v1 secret", string(got))
}
