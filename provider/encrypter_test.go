package provider

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"io"
	"log"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// encrypterKEK makes an RSA KEK for the encrypter tests (RSA: AES KEKs may
// be refused on SoftHSM, which keeps public objects in clear).
func encrypterKEK(t *testing.T) *KEK {
	t.Helper()
	return makeKEK(t, openAdmin(t), uniqueName(t, "encrypter"), KEKRSA2048)
}

// writeIn writes msg to w in pieces of the given sizes (the last repeated).
func writeIn(t *testing.T, w io.Writer, msg []byte, pieces ...int) {
	t.Helper()
	for i := 0; len(msg) > 0; i++ {
		n := min(pieces[min(i, len(pieces)-1)], len(msg))
		m, err := w.Write(msg[:n])
		require.NoError(t, err)
		require.Equal(t, n, m)
		msg = msg[n:]
	}
}

func TestEncrypterRoundTrip(t *testing.T) {
	kek := encrypterKEK(t)
	p := openProvider(t, func(c *Config) { c.ChunkSize = 4 << 10 })
	kek = mustKEK(t, p, kek)
	r := openRaw(t)
	before := r.sessionKeys(t)
	chunk := p.chunkSize()
	for _, tc := range []struct {
		name   string
		size   int
		pieces []int
		o      Options
	}{
		{"empty", 0, []int{1}, Options{}},
		{"one byte", 1, []int{1}, Options{}},
		{"byte by byte", 3*chunk + 7, []int{1}, Options{}},
		{"a chunk less one", chunk - 1, []int{chunk}, Options{}},
		{"one chunk", chunk, []int{chunk}, Options{}},
		{"chunk and one", chunk + 1, []int{chunk + 1}, Options{}},
		{"odd pieces", 5*chunk + 3, []int{7, chunk - 7, 2*chunk + 1, 13}, Options{}},
		{"one big write", 9*chunk + 5, []int{9*chunk + 5}, Options{}},
		{"context", 2*chunk + 9, []int{100}, Options{Context: map[string]string{"app": "billing"}}},
		{"armor", 2*chunk + 9, []int{1000}, Options{Armor: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			msg := make([]byte, tc.size)
			_, _ = rand.Read(msg)
			var out bytes.Buffer
			w, err := p.NewEncrypter(bg, &out, []*KEK{kek}, tc.o)
			require.NoError(t, err)
			writeIn(t, w, msg, tc.pieces...)
			require.NoError(t, w.Close())
			assert.Equal(t, before, r.sessionKeys(t), "the message key outlived Close")

			var got bytes.Buffer
			require.NoError(t, p.Decrypt(bg, &got, bytes.NewReader(out.Bytes()), int64(out.Len()), tc.o))
			require.True(t, bytes.Equal(msg, got.Bytes()), "decrypted %d bytes, want %d", got.Len(), len(msg))
			if len(tc.o.Context) > 0 {
				err := p.Decrypt(bg, io.Discard, bytes.NewReader(out.Bytes()), int64(out.Len()), Options{})
				require.ErrorIs(t, err, ErrContext)
			}
			// A message edited in its last part (ciphertext or tag) fails.
			if tc.size > 0 && !tc.o.Armor {
				bad := bytes.Clone(out.Bytes())
				bad[len(bad)-8] ^= 1
				err := p.Decrypt(bg, io.Discard, bytes.NewReader(bad), int64(len(bad)), tc.o)
				require.Error(t, err)
			}
		})
	}
}

func TestEncrypterWriteAfterClose(t *testing.T) {
	kek := encrypterKEK(t)
	p := openProvider(t)
	kek = mustKEK(t, p, kek)
	var out bytes.Buffer
	w, err := p.NewEncrypter(bg, &out, []*KEK{kek}, Options{})
	require.NoError(t, err)
	_, err = w.Write([]byte("hello"))
	require.NoError(t, err)
	require.NoError(t, w.Close())
	n := out.Len()
	_, err = w.Write([]byte("more"))
	require.ErrorIs(t, err, ErrInvalidInput)
	assert.Equal(t, n, out.Len(), "a write after close reached dst")
	require.NoError(t, w.Close(), "a second Close")
}

// failingWriter accepts limit bytes, then fails.
type failingWriter struct {
	limit int
	n     int
}

var errDst = errors.New("disk full")

func (f *failingWriter) Write(b []byte) (int, error) {
	if f.n+len(b) > f.limit {
		return 0, errDst
	}
	f.n += len(b)
	return len(b), nil
}

func TestEncrypterErrorsLeaveNoKey(t *testing.T) {
	kek := encrypterKEK(t)
	p := openProvider(t, func(c *Config) { c.ChunkSize = 4 << 10; c.MaxSessions = 2 })
	kek = mustKEK(t, p, kek)
	r := openRaw(t)
	before := r.sessionKeys(t)
	chunk := p.chunkSize()

	t.Run("dst fails", func(t *testing.T) {
		w, err := p.NewEncrypter(bg, &failingWriter{limit: 3 * chunk}, []*KEK{kek}, Options{})
		require.NoError(t, err)
		var werr error
		for i := 0; i < 16 && werr == nil; i++ {
			_, werr = w.Write(make([]byte, chunk))
		}
		require.ErrorIs(t, werr, errDst)
		assert.Equal(t, before, r.sessionKeys(t), "the message key outlived a failed Write")
		_, err = w.Write([]byte("x"))
		require.ErrorIs(t, err, errDst, "a void message takes no more writes")
		require.ErrorIs(t, w.Close(), errDst)
	})
	t.Run("context cancelled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(bg)
		var out bytes.Buffer
		w, err := p.NewEncrypter(ctx, &out, []*KEK{kek}, Options{})
		require.NoError(t, err)
		_, err = w.Write(make([]byte, chunk+1))
		require.NoError(t, err)
		cancel()
		_, err = w.Write(make([]byte, 10))
		require.ErrorIs(t, err, context.Canceled)
		require.ErrorIs(t, w.Close(), context.Canceled)
		assert.Equal(t, before, r.sessionKeys(t), "the message key outlived a cancelled message")
	})
	t.Run("bad input", func(t *testing.T) {
		_, err := p.NewEncrypter(bg, nil, []*KEK{kek}, Options{})
		require.ErrorIs(t, err, ErrInvalidInput)
		_, err = p.NewEncrypter(bg, io.Discard, nil, Options{})
		require.ErrorIs(t, err, ErrInvalidInput)
		_, err = p.NewEncrypter(bg, io.Discard, []*KEK{kek}, Options{Context: map[string]string{"": "x"}})
		require.ErrorIs(t, err, ErrInvalidInput)
		assert.Equal(t, before, r.sessionKeys(t), "a refused message left its key")
	})
	// Every session the writers took is back: two messages at once fit in
	// a pool of two.
	var a, b bytes.Buffer
	w1, err := p.NewEncrypter(bg, &a, []*KEK{kek}, Options{})
	require.NoError(t, err)
	w2, err := p.NewEncrypter(bg, &b, []*KEK{kek}, Options{})
	require.NoError(t, err)
	require.NoError(t, w1.Close())
	require.NoError(t, w2.Close())
}

// TestEncrypterNeverClosed: Provider.Close ends a writer that was never
// closed: its session key is destroyed and the session it held is closed,
// even when that was the pool's only session.
func TestEncrypterNeverClosed(t *testing.T) {
	kek := encrypterKEK(t)
	needToken(t)
	cfg := baseConfig()
	cfg.MaxSessions = 1
	p, err := Open(bg, cfg)
	require.NoError(t, err)
	kek = mustKEK(t, p, kek)
	r := openRaw(t)
	before := r.sessionKeys(t)
	w, err := p.NewEncrypter(bg, io.Discard, []*KEK{kek}, Options{})
	require.NoError(t, err)
	_, err = w.Write(make([]byte, 100<<10))
	require.NoError(t, err)
	obj := uint(w.(*encrypter).k.obj)
	require.True(t, r.exists(obj))
	require.Equal(t, before+1, r.sessionKeys(t))

	// With the pool's only session held by w, Close must take it back to
	// destroy the key; before detach it waited for a session forever.
	require.NoError(t, p.Close())
	assert.False(t, r.exists(obj), "the session key outlived Provider.Close")
	assert.Equal(t, before, r.sessionKeys(t))
	assert.Equal(t, 0, p.Sessions(), "a session outlived Provider.Close")
	_, err = w.Write([]byte("x"))
	require.ErrorIs(t, err, ErrKeyDestroyed)
	require.ErrorIs(t, w.Close(), ErrKeyDestroyed)
}

// TestEncrypterOpenSSL: openssl cms opens what the writer makes, DER and
// PEM, for an RSA recipient whose private key openssl holds (no encryption
// context: OpenSSL 3.0 cannot parse authenticated attributes).
func TestEncrypterOpenSSL(t *testing.T) {
	needOpenSSL(t)
	dir := t.TempDir()
	a := openAdmin(t)
	keyPEM := filepath.Join(dir, "key.pem")
	certPEM := filepath.Join(dir, "cert.pem")
	openssl(t, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", keyPEM, "-out", certPEM, "-subj", "/CN=encrypter", "-days", "1")
	partner, err := a.ImportPublicKEK(bg, uniqueName(t, "encrypter-partner"), readCert(t, certPEM).PublicKey.(*rsa.PublicKey))
	require.NoError(t, err)
	t.Cleanup(func() { _ = a.DestroyKEK(bg, partner.ID) })
	p := openProvider(t)
	partner = mustKEK(t, p, partner)

	msg := make([]byte, 3*DefaultChunkSize+11)
	_, _ = rand.Read(msg)
	for _, armor := range []bool{false, true} {
		var out bytes.Buffer
		w, err := p.NewEncrypter(bg, &out, []*KEK{partner}, Options{Armor: armor})
		require.NoError(t, err)
		writeIn(t, w, msg, 1000)
		require.NoError(t, w.Close())
		in, dec := filepath.Join(dir, "msg"), filepath.Join(dir, "dec")
		require.NoError(t, os.WriteFile(in, out.Bytes(), 0o600))
		form := "DER"
		if armor {
			form = "PEM"
		}
		openssl(t, "cms", "-decrypt", "-binary", "-inform", form, "-in", in, "-out", dec, "-inkey", keyPEM, "-recip", certPEM)
		got, err := os.ReadFile(dec)
		require.NoError(t, err)
		require.True(t, bytes.Equal(msg, got), "openssl -inform %s", form)
	}
}

// NewEncrypter takes what an encoder writes, without a pipe and a
// goroutine: here a JSON document, encrypted as it is encoded.
func ExampleProvider_NewEncrypter() {
	ctx := context.Background()
	p, err := Open(ctx, Config{
		URI: "pkcs11:token=hsmkeys?module-path=/usr/lib/softhsm/libsofthsm2.so",
		PIN: PINFile("/run/secrets/hsm-pin"),
	})
	if err != nil {
		log.Fatal(err)
	}
	defer p.Close()
	kek, err := p.KEK(ctx, "backup")
	if err != nil {
		log.Fatal(err)
	}
	out, err := os.Create("report.json.cms")
	if err != nil {
		log.Fatal(err)
	}
	defer out.Close()
	w, err := p.NewEncrypter(ctx, out, []*KEK{kek}, Options{})
	if err != nil {
		log.Fatal(err)
	}
	if err := json.NewEncoder(w).Encode(map[string]int{"users": 42}); err != nil {
		log.Fatal(err) // the message is void; its session key is gone
	}
	if err := w.Close(); err != nil { // the tag: without it nothing decrypts
		log.Fatal(err)
	}
}
