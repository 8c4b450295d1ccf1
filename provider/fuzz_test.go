package provider

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// FuzzPINFile: whatever a PIN file holds, ReadPIN returns its first line
// without the line end, or an ErrPINSource error for an empty one; never a
// panic, never a PIN with a line break, never the PIN in an error.
func FuzzPINFile(f *testing.F) {
	for _, s := range []string{"1234", "1234\n", "1234\r\n", "\n", "", "a\nb", "\r\n\r\n", "pin with spaces \n", "\x00\x01\n"} {
		f.Add([]byte(s))
	}
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, content []byte) {
		path := filepath.Join(dir, "pin")
		require.NoError(t, os.WriteFile(path, content, 0o600))
		pin, err := PINFile(path).ReadPIN(context.Background(), TokenInfo{})
		if err != nil {
			require.ErrorIs(t, err, ErrPINSource)
			require.Empty(t, pin)
			first := strings.TrimSuffix(strings.SplitN(string(content), "\n", 2)[0], "\r")
			if len(first) <= MaxPINLen && len(content) <= maxSecretFile {
				require.Empty(t, first, "only an empty, too long or too large first line is refused")
			}
			return
		}
		require.NotEmpty(t, pin)
		require.NotContains(t, string(pin), "\n")
		require.True(t, bytes.HasPrefix(content, pin))
	})
}

// FuzzPublicInputs hands arbitrary bytes to every public function of the
// provider that takes bytes from outside: a typed error or success, never a
// panic, and never a hang (each call has a deadline it must not need).
func FuzzPublicInputs(f *testing.F) {
	needToken(f)
	a := openAdmin(f)
	kek, err := a.CreateKEKWith(bg, uniqueName(f, "fuzz"), KEKAES256, KEKOptions{AllowExposedAtRest: true})
	require.NoError(f, err)
	require.NoError(f, a.Close())
	p := openProvider(f)
	kek = mustKEK(f, p, kek)
	k, err := p.Generate(bg, AES256)
	require.NoError(f, err)
	blob, err := p.Export(bg, k, []*KEK{kek}, Options{Context: map[string]string{"a": "b"}})
	require.NoError(f, err)
	var msg bytes.Buffer
	require.NoError(f, p.Encrypt(bg, &msg, strings.NewReader("fuzz me"), -1, []*KEK{kek}, Options{Armor: true}))
	sealed, err := k.Seal(bg, []byte("x"), nil)
	require.NoError(f, err)
	w, err := p.Wrap(bg, k, kek)
	require.NoError(f, err)
	// Inputs of the sizes and shapes that cost most (issue 12): a message
	// with 88,000 authenticated attributes in 1 MiB, and 256 KiB of
	// content in 1-byte pieces.
	var der, pieces bytes.Buffer
	require.NoError(f, p.Encrypt(bg, &der, strings.NewReader("fuzz me"), 7, []*KEK{kek}, Options{}))
	bomb := withAuthAttrs(f, der.Bytes(), 88000)
	der.Reset()
	require.NoError(f, p.Encrypt(bg, &der, bytes.NewReader(make([]byte, 256<<10)), 256<<10, []*KEK{kek}, Options{}))
	reencodePieces(f, &pieces, der.Bytes(), 1)
	for _, seed := range [][]byte{nil, {0}, {0x30}, {0x30, 0x80}, {0x30, 0x84, 0xff, 0xff, 0xff, 0xff}, blob, blob[:len(blob)/2],
		msg.Bytes(), msg.Bytes()[:40], sealed, w.Bytes, []byte("-----BEGIN CMS-----\n"), bytes.Repeat([]byte{0xff}, 600),
		bomb, pieces.Bytes()} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		check := func(name string, err error) {
			if err != nil && !isTyped(err) && ctx.Err() == nil {
				t.Fatalf("%s: untyped error %v", name, err)
			}
		}
		_, err := Inspect(in)
		check("Inspect", err)
		if key, err := p.Import(ctx, in, Options{Context: map[string]string{"a": "b"}}); err == nil {
			_ = key.Destroy(ctx)
		} else {
			check("Import", err)
		}
		check("Decrypt", p.Decrypt(ctx, &bytes.Buffer{}, bytes.NewReader(in), int64(len(in)), Options{}))
		_, err = k.Open(ctx, in, nil)
		check("Open", err)
		_, err = k.Open(ctx, sealed, in)
		check("Open aad", err)
		if key, err := p.Unwrap(ctx, &WrappedKey{KEKID: kek.ID, Mechanism: AESKeyWrap, Algorithm: AES256, Bytes: in}); err == nil {
			_ = key.Destroy(ctx)
		} else {
			check("Unwrap", err)
		}
		_, err = p.KEKByID(ctx, in)
		check("KEKByID", err)
		_, err = p.KEK(ctx, string(in))
		check("KEK", err)
		for _, parse := range []func(string) error{
			func(s string) error { _, err := ParseAlgorithm(s); return err },
			func(s string) error { _, err := ParseKEKType(s); return err },
			func(s string) error { _, err := ParseExportPolicy(s); return err },
		} {
			check("Parse", parse(string(in)))
		}
	})
}
