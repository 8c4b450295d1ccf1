package envelope

// These tests run against a real SoftHSM token that TestMain makes, opened
// through faultmod.so (no faults: it only counts the PKCS#11 calls, so that
// TestTokenCalls can report what an envelope costs).

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hsmkeys/hsmkeys/integrations/internal/softhsmtest"
	"github.com/hsmkeys/hsmkeys/internal/faultmod"
	"github.com/hsmkeys/hsmkeys/provider"
	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var (
	bg  = context.Background()
	tok *softhsmtest.Token
	fm  struct {
		ctl    *faultmod.Control
		stats  string
		anchor *pkcs11.Ctx
	}
	keks = map[string]*provider.KEK{} // made by TestMain, by name
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "hsmkeys-envelope-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	tok = softhsmtest.New(dir, "hsmkeys-envelope", func(softhsm string) (string, error) {
		if _, err := exec.LookPath("gcc"); err != nil {
			return "", fmt.Errorf("gcc is needed to build faultmod.so: %w", err)
		}
		so, err := faultmod.Build(filepath.Join(dir, "faultmod"))
		if err != nil {
			return "", err
		}
		fm.ctl = &faultmod.Control{Path: filepath.Join(dir, "faults")}
		fm.stats = filepath.Join(dir, "stats")
		for _, kv := range faultmod.Env(softhsm, fm.ctl.Path, fm.stats) {
			k, v, _ := strings.Cut(kv, "=")
			if err := os.Setenv(k, v); err != nil {
				return "", err
			}
		}
		return so, nil
	})
	if tok.Err == nil {
		tok.Err = setup()
	}
	code := m.Run()
	if fm.anchor != nil {
		_ = fm.anchor.Finalize()
		fm.anchor.Destroy()
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

func setup() error {
	// The anchor keeps faultmod.so initialised for the run, so its counters
	// run from the start; it holds no session.
	fm.anchor = pkcs11.New(tok.Module)
	if fm.anchor == nil {
		return fmt.Errorf("cannot load %s", tok.Module)
	}
	if err := fm.anchor.Initialize(); err != nil {
		return err
	}
	for _, name := range []string{"env-a", "env-b"} {
		k, err := tok.CreateKEK(bg, name)
		if err != nil {
			return err
		}
		keks[name] = k
	}
	return nil
}

// open opens an envelope for the KEK name on the test token.
func open(t *testing.T, name string) *Envelope {
	t.Helper()
	tok.Need(t)
	e, err := Open(bg, Settings{KEK: name}, func(k string) string { return tok.Env()[k] })
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, e.Close()) })
	return e
}

func TestSealOpen(t *testing.T) {
	e := open(t, "env-a")
	assert.Equal(t, keks["env-a"].ID, e.KEK().ID)
	for _, size := range []int{0, 1, 100, 64 << 10, 5 << 20} {
		msg := make([]byte, size)
		_, _ = rand.Read(msg)
		for _, aad := range [][]byte{nil, []byte("row 17"), {0, 1, 2, 255}} {
			env, err := e.Seal(bg, msg, aad)
			require.NoError(t, err)
			got, err := e.Open(bg, env, aad)
			require.NoError(t, err)
			require.True(t, bytes.Equal(msg, got), "%d bytes, aad %q", size, aad)
			_, err = e.Open(bg, env, append(slices.Clone(aad), 'x'))
			require.ErrorIs(t, err, provider.ErrContext, "other associated data")
		}
	}
	env, err := e.Seal(bg, []byte("secret"), nil)
	require.NoError(t, err)
	bad := slices.Clone(env)
	bad[len(bad)-1] ^= 1
	_, err = e.Open(bg, bad, nil)
	require.ErrorIs(t, err, provider.ErrAuthentication)
	_, err = e.Open(bg, []byte("not an envelope"), nil)
	require.ErrorIs(t, err, provider.ErrMalformed)
	_, err = e.Open(bg, nil, nil)
	require.ErrorIs(t, err, provider.ErrMalformed)
}

// TestOtherKEKRefused: an envelope keeper for one KEK does not open the
// messages of another KEK of the same token.
func TestOtherKEKRefused(t *testing.T) {
	a := open(t, "env-a")
	b, err := New(bg, a.Provider(), "env-b")
	require.NoError(t, err)
	defer b.Close()
	env, err := b.Seal(bg, []byte("for b"), nil)
	require.NoError(t, err)
	_, err = a.Open(bg, env, nil)
	require.ErrorIs(t, err, ErrOtherKEK)
	got, err := b.Open(bg, env, nil)
	require.NoError(t, err)
	assert.Equal(t, "for b", string(got))
	// The provider itself would open it: the refusal is the envelope's.
	var out bytes.Buffer
	require.NoError(t, a.Provider().Decrypt(bg, &out, bytes.NewReader(env), int64(len(env)), provider.Options{}))
}

// TestRotation: after a new version of the KEK, Refresh seals for it, and
// messages for the old version still open.
func TestRotation(t *testing.T) {
	tok.Need(t)
	name := "env-rotate"
	v1, err := tok.CreateKEK(bg, name)
	require.NoError(t, err)
	e, err := Open(bg, Settings{KEK: name}, func(k string) string { return tok.Env()[k] })
	require.NoError(t, err)
	old, err := e.Seal(bg, []byte("v1"), []byte("ctx"))
	require.NoError(t, err)
	require.NoError(t, e.Close()) // the SO login needs no provider open
	v2, err := tok.CreateKEK(bg, name)
	require.NoError(t, err)
	require.Greater(t, v2.Version, v1.Version)

	e = open(t, name)
	assert.Equal(t, v2.ID, e.KEK().ID, "open finds the newest version")
	got, err := e.Open(bg, old, []byte("ctx"))
	require.NoError(t, err)
	assert.Equal(t, "v1", string(got))
	info, err := provider.Inspect(must(e.Seal(bg, []byte("v2"), nil)))
	require.NoError(t, err)
	require.Len(t, info.Recipients, 1)
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// cli builds the hsmkeys command once.
func cli(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(tok.Dir, "hsmkeys")
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
	out, err := exec.Command(gobin, "build", "-o", bin, "github.com/hsmkeys/hsmkeys/cmd/hsmkeys").CombinedOutput()
	require.NoError(t, err, "go build: %s", out)
	return bin
}

// TestCLIDecrypt: hsmkeys decrypt opens envelopes, with --context
// aad=BASE64 for associated data, and what Provider.NewEncrypter writes.
func TestCLIDecrypt(t *testing.T) {
	e := open(t, "env-a")
	bin := cli(t)
	dir := t.TempDir()
	msg := make([]byte, 100<<10)
	_, _ = rand.Read(msg)

	var streamed bytes.Buffer
	w, err := e.Provider().NewEncrypter(bg, &streamed, []*provider.KEK{e.KEK()}, provider.Options{})
	require.NoError(t, err)
	for p := msg; len(p) > 0; p = p[min(len(p), 999):] {
		_, err := w.Write(p[:min(len(p), 999)])
		require.NoError(t, err)
	}
	require.NoError(t, w.Close())

	aad := []byte("tenant=7\x00\xff")
	for _, tc := range []struct {
		name string
		msg  []byte
		args []string
	}{
		{"envelope", must(e.Seal(bg, msg, nil)), nil},
		{"envelope with aad", must(e.Seal(bg, msg, aad)), []string{"--context", "aad=" + base64.StdEncoding.EncodeToString(aad)}},
		{"encrypter", streamed.Bytes(), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in, out := filepath.Join(dir, "in"), filepath.Join(dir, "out")
			require.NoError(t, os.WriteFile(in, tc.msg, 0o600))
			os.Remove(out)
			cmd := exec.Command(bin, append([]string{"decrypt", "-i", in, "-o", out}, tc.args...)...)
			// The child opens SoftHSM itself (faultmod.so counts this process).
			cmd.Env = append(os.Environ(), "HSMKEYS_MODULE="+tok.SoftHSM, "HSMKEYS_TOKEN="+tok.Label, "HSMKEYS_PIN_FILE="+tok.PINFile)
			cmd.Stdin = nil
			b, err := cmd.CombinedOutput()
			require.NoError(t, err, "hsmkeys decrypt: %s", b)
			got, err := os.ReadFile(out)
			require.NoError(t, err)
			require.True(t, bytes.Equal(msg, got))
		})
	}
}

// TestOpenSSL: openssl cms opens an envelope without associated data, for
// an RSA KEK whose private key the test (openssl) holds: the token has only
// its trusted public half, which is all sealing needs.
func TestOpenSSL(t *testing.T) {
	tok.Need(t)
	opensslBin, err := exec.LookPath("openssl")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("CI is set and openssl is missing")
		}
		t.Skip("openssl not installed")
	}
	dir := t.TempDir()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	keyPEM, certPEM := filepath.Join(dir, "key.pem"), filepath.Join(dir, "cert.pem")
	der, err := x509.MarshalPKCS8PrivateKey(key)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(keyPEM, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600))
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "envelope"},
		NotBefore: time.Unix(0, 0), NotAfter: time.Unix(1<<33, 0),
		// As openssl computes it (Go's own default is truncated SHA-256).
		SubjectKeyId: subjectKeyID(&key.PublicKey)}
	cert, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(certPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert}), 0o600))

	a, err := provider.OpenAdmin(bg, tok.Config(), provider.PINValue([]byte(softhsmtest.SOPIN)))
	require.NoError(t, err)
	partner, err := a.ImportPublicKEK(bg, "env-partner", &key.PublicKey)
	require.NoError(t, err)
	require.NoError(t, a.Close())

	e := open(t, partner.Label)
	msg := make([]byte, 70<<10)
	_, _ = rand.Read(msg)
	in, out := filepath.Join(dir, "in"), filepath.Join(dir, "out")
	require.NoError(t, os.WriteFile(in, must(e.Seal(bg, msg, nil)), 0o600))
	b, err := exec.Command(opensslBin, "cms", "-decrypt", "-binary", "-inform", "DER", "-in", in, "-out", out, "-inkey", keyPEM, "-recip", certPEM).CombinedOutput()
	require.NoError(t, err, "openssl: %s", b)
	got, err := os.ReadFile(out)
	require.NoError(t, err)
	require.True(t, bytes.Equal(msg, got))
}

// snapshot makes faultmod.so write its call counters now and reads them.
func snapshot(t *testing.T) *faultmod.Stats {
	t.Helper()
	if err := os.Remove(fm.stats); err != nil && !errors.Is(err, fs.ErrNotExist) {
		require.NoError(t, err)
	}
	require.NoError(t, fm.ctl.Set("stats"))
	_, err := fm.anchor.GetInfo()
	require.NoError(t, err)
	s, err := faultmod.ReadStats(fm.stats)
	require.NoError(t, err)
	return s
}

// calls is what happened between two snapshots, by function, without the
// snapshot's own C_GetInfo.
func calls(before, after *faultmod.Stats) map[string]uint64 {
	d := map[string]uint64{}
	for f, n := range after.Calls {
		if n > before.Calls[f] {
			d[f] = n - before.Calls[f]
		}
	}
	if d["C_GetInfo"]--; d["C_GetInfo"] == 0 {
		delete(d, "C_GetInfo")
	}
	return d
}

// TestTokenCalls counts the PKCS#11 calls of one Seal and one Open of a
// 1 KiB message, in steady state (the KEK found, sessions open), the
// numbers the README gives for every adapter (each adapter call is one Seal
// or one Open). miekg/pkcs11's WrapKey, Encrypt and Decrypt call their C
// function twice (length, then data).
func TestTokenCalls(t *testing.T) {
	e := open(t, "env-a")
	msg := make([]byte, 1<<10)
	env, err := e.Seal(bg, msg, []byte("aad")) // warm: sessions, oaep choice
	require.NoError(t, err)
	_, err = e.Open(bg, env, []byte("aad"))
	require.NoError(t, err)

	s0 := snapshot(t)
	env, err = e.Seal(bg, msg, []byte("aad"))
	require.NoError(t, err)
	s1 := snapshot(t)
	_, err = e.Open(bg, env, []byte("aad"))
	require.NoError(t, err)
	s2 := snapshot(t)
	_, err = e.Refresh(bg)
	require.NoError(t, err)
	s3 := snapshot(t)
	seal, open, refresh := calls(s0, s1), calls(s1, s2), calls(s2, s3)
	t.Logf("seal (RSA-2048 KEK, 1 KiB): %v", seal)
	t.Logf("open (RSA-2048 KEK, 1 KiB): %v", open)
	t.Logf("refresh (kmswrap KeyId; %d KEK objects on the token): %v", len(must(e.Provider().KEKs(bg))), refresh)
	sum := func(m map[string]uint64) (n uint64) {
		for _, v := range m {
			n += v
		}
		return n
	}
	t.Logf("seal: %d calls, open: %d calls, refresh: %d calls", sum(seal), sum(open), sum(refresh))

	assert.Equal(t, uint64(1), seal["C_GenerateKey"], "one fresh key per message")
	assert.Equal(t, uint64(1), seal["C_DestroyObject"], "the key destroyed after the message")
	assert.NotZero(t, seal["C_WrapKey"])
	assert.Equal(t, uint64(1), open["C_UnwrapKey"], "one unwrap per message")
	assert.Equal(t, uint64(1), open["C_DestroyObject"], "the key destroyed after the message")
	for _, f := range []string{"C_Login", "C_OpenSession", "C_FindObjectsInit"} {
		assert.Zero(t, seal[f]+open[f], "%s in steady state", f)
	}
}

// TestConcurrent seals and opens from many goroutines at once, more than
// the provider has sessions, with a Refresh among them.
func TestConcurrent(t *testing.T) {
	tok.Need(t)
	cfg, err := Settings{KEK: "env-a"}.Config(func(k string) string { return tok.Env()[k] })
	require.NoError(t, err)
	cfg.MaxSessions = 4
	p, err := provider.Open(bg, cfg)
	require.NoError(t, err)
	defer p.Close()
	e, err := New(bg, p, "env-a")
	require.NoError(t, err)
	errs := make(chan error, 16)
	for i := range 16 {
		go func() {
			errs <- func() error {
				msg := []byte(fmt.Sprintf("message %d", i))
				for range 8 {
					if i == 0 {
						if _, err := e.Refresh(bg); err != nil {
							return err
						}
					}
					env, err := e.Seal(bg, msg, msg)
					if err != nil {
						return err
					}
					got, err := e.Open(bg, env, msg)
					if err != nil {
						return err
					}
					if !bytes.Equal(got, msg) {
						return fmt.Errorf("got %q, want %q", got, msg)
					}
				}
				return nil
			}()
		}()
	}
	for range 16 {
		require.NoError(t, <-errs)
	}
}
