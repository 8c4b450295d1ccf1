package provider

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// otherUID is a uid that is not ours, for files "of another user".
const otherUID = 54321

// TestSecretFileChecks: PIN files and KEK value files are refused, naming
// the file, when others may read them, when another user owns them (also
// behind a link), and when they are not files; none of these is read.
func TestSecretFileChecks(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte(content), mode))
		require.NoError(t, os.Chmod(p, mode))
		return p
	}
	good := write("good", "1234\n", 0o600)
	groupReadable := write("group", "1234\n", 0o640)
	worldReadable := write("world", "1234\n", 0o604)
	others := write("others", "1234\n", 0o600)
	if os.Geteuid() == 0 {
		require.NoError(t, os.Chown(others, otherUID, otherUID))
	}
	link := filepath.Join(dir, "link-to-others")
	require.NoError(t, os.Symlink(others, link))
	goodLink := filepath.Join(dir, "link-to-good")
	require.NoError(t, os.Symlink(good, goodLink))

	// A KEK value file is a regular file: a FIFO is refused before any read
	// could wait on it.
	fifo := filepath.Join(dir, "fifo")
	require.NoError(t, syscall.Mkfifo(fifo, 0o600))
	_, err := readSecretFile(fifo)
	require.ErrorIs(t, err, ErrSecretFile)
	assert.Contains(t, err.Error(), "not a regular file (a pipe)")

	for _, path := range []string{good, goodLink} {
		pin, err := PINFile(path).ReadPIN(bg, TokenInfo{})
		require.NoError(t, err, path)
		assert.Equal(t, "1234", string(pin))
	}
	cases := map[string]struct{ path, want string }{
		"group readable":         {groupReadable, "group or others"},
		"world readable":         {worldReadable, "group or others"},
		"a device":               {"/dev/zero", ""},
		"a directory":            {dir, "not a regular file"},
		"another user's file":    {others, "owned by uid"},
		"a link to another user": {link, "owned by uid"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			if strings.Contains(name, "another user") && os.Geteuid() != 0 {
				t.Skip("needs root to give a file to another user")
			}
			_, err := PINFile(c.path).ReadPIN(bg, TokenInfo{})
			require.ErrorIs(t, err, ErrPINSource)
			assert.Contains(t, err.Error(), c.path, "the error names the file")
			assert.Contains(t, err.Error(), c.want)
			_, err = readSecretFile(c.path)
			require.ErrorIs(t, err, ErrSecretFile)
			assert.Contains(t, err.Error(), c.path)
			assert.Contains(t, err.Error(), c.want)
		})
	}
}

// TestPINFileBounded: a PIN file is read with a cap, a long PIN is refused
// before the token sees it, and a pipe that never writes gives up when the
// context ends.
func TestPINFileBounded(t *testing.T) {
	dir := t.TempDir()
	long := filepath.Join(dir, "long")
	require.NoError(t, os.WriteFile(long, append(bytes.Repeat([]byte("7"), MaxPINLen+1), '\n'), 0o600))
	_, err := PINFile(long).ReadPIN(bg, TokenInfo{})
	require.ErrorIs(t, err, ErrSecretTooLong)
	require.ErrorIs(t, err, ErrPINSource)

	huge := filepath.Join(dir, "huge")
	require.NoError(t, os.WriteFile(huge, append([]byte("1234\n"), make([]byte, 1<<20)...), 0o600))
	_, err = PINFile(huge).ReadPIN(bg, TokenInfo{})
	require.ErrorIs(t, err, ErrSecretTooLong)

	_, err = PINValue(bytes.Repeat([]byte("7"), MaxPINLen+1)).ReadPIN(bg, TokenInfo{})
	require.ErrorIs(t, err, ErrSecretTooLong)
	t.Setenv("HSMKEYS_TEST_LONG_PIN", strings.Repeat("7", MaxPINLen+1))
	_, err = PINEnv("HSMKEYS_TEST_LONG_PIN").ReadPIN(bg, TokenInfo{})
	require.ErrorIs(t, err, ErrSecretTooLong)

	blank := filepath.Join(dir, "blank")
	require.NoError(t, os.WriteFile(blank, []byte("\n1234\n"), 0o600))
	_, err = PINFile(blank).ReadPIN(bg, TokenInfo{})
	require.ErrorIs(t, err, ErrPINSource)
	assert.Contains(t, err.Error(), "first line is blank")
	assert.NotContains(t, err.Error(), "1234")

	// A FIFO with a writer that never writes: the read waits, and ends
	// with the context. The writer is held open so that the read cannot
	// see end of file.
	fifo := filepath.Join(dir, "fifo")
	require.NoError(t, syscall.Mkfifo(fifo, 0o600))
	w, err := os.OpenFile(fifo, os.O_RDWR, 0) // RDWR: opens without a reader
	require.NoError(t, err)
	defer w.Close()
	ctx, cancel := context.WithCancel(bg)
	done := make(chan error, 1)
	go func() {
		_, err := PINFile(fifo).ReadPIN(ctx, TokenInfo{})
		done <- err
	}()
	cancel()
	select {
	case err := <-done:
		require.ErrorIs(t, err, context.Canceled)
	case <-time.After(time.Minute): // a guard against a hang, not a race
		t.Fatal("reading a silent fifo did not end with its context")
	}
	// A FIFO that gives a PIN works (a pipe from a password manager), up
	// to the line end, though its writer stays.
	_, err = w.Write([]byte("4321\n"))
	require.NoError(t, err)
	pin, err := PINFile(fifo).ReadPIN(bg, TokenInfo{})
	require.NoError(t, err)
	assert.Equal(t, "4321", string(pin))
}

// longPIN is a PIN source of the caller's own that gives too long a PIN.
type longPIN struct{}

func (longPIN) ReadPIN(context.Context, TokenInfo) ([]byte, error) {
	return bytes.Repeat([]byte("7"), MaxPINLen+1), nil
}

// TestLongPINNeverReachesLogin: whatever the source, a PIN over MaxPINLen
// is refused before C_Login, so it costs no PIN try.
func TestLongPINNeverReachesLogin(t *testing.T) {
	needToken(t)
	_, err := Open(bg, Config{Module: tok.module, TokenLabel: tok.label, PIN: longPIN{}})
	require.ErrorIs(t, err, ErrSecretTooLong)
	var pe *PINError
	require.False(t, errors.As(err, &pe), "no login was tried: %v", err)
}

func TestPINSourceFileURI(t *testing.T) {
	for src, want := range map[string]string{
		"file:/run/pin":              "/run/pin",
		"file:///run/pin":            "/run/pin",
		"file://localhost/run/pin":   "/run/pin",
		"file://LOCALHOST/run/pin":   "/run/pin",
		"file://host/p":              "",
		"file://example.com/run/pin": "",
		"file:relative/pin":          "",
		"file:":                      "",
		"file://":                    "",
		"file://localhost":           "",
	} {
		got, err := fileURIPath(src)
		if want == "" {
			require.Error(t, err, src)
			continue
		}
		require.NoError(t, err, src)
		assert.Equal(t, want, got, src)
	}
	_, err := Config{URI: "pkcs11:token=x?module-path=/m.so&pin-source=file://host/p"}.resolve()
	require.ErrorIs(t, err, ErrConfig)
	assert.Contains(t, err.Error(), `"host"`)
}

// TestConfigRedactedEverywhere: no encoding of a Config shows the PIN,
// neither a PINValue nor a URI's pin-value.
func TestConfigRedactedEverywhere(t *testing.T) {
	secret := "s3cr3t-p1n-value"
	for _, cfg := range []Config{
		{Module: "/m.so", URI: "pkcs11:token=x?pin-value=" + secret},
		{Module: "/m.so", TokenLabel: "x", PIN: PINValue([]byte(secret))},
	} {
		var text, js bytes.Buffer
		slog.New(slog.NewTextHandler(&text, nil)).Info("open", "cfg", cfg)
		slog.New(slog.NewJSONHandler(&js, nil)).Info("open", "cfg", cfg)
		b, err := json.Marshal(cfg)
		require.NoError(t, err)
		for _, s := range []string{string(b), text.String(), js.String(), fmt.Sprint(cfg), fmt.Sprintf("%#v", cfg)} {
			assert.NotContains(t, s, secret)
			assert.Contains(t, s, "redacted", "says a pin is there: %s", s)
		}
		assert.Contains(t, string(b), `"module":"/m.so"`)
	}
}
