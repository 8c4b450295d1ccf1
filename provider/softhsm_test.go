package provider

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hsmkeys/hsmkeys/provider/internal/p11"
	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

var bg = context.Background()

func TestOpenSelectsToken(t *testing.T) {
	needToken(t)
	slot := tok.slot
	other := tok.slot + 12345
	cases := []struct {
		name string
		cfg  Config
	}{
		{"label", Config{Module: tok.module, TokenLabel: tok.label}},
		{"serial", Config{Module: tok.module, TokenSerial: tok.serial}},
		{"slot", Config{Module: tok.module, Slot: &slot}},
		{"uri", Config{URI: "pkcs11:token=" + tok.label + ";serial=" + tok.serial + "?module-path=" + tok.module}},
		{"uri pin-source", Config{URI: "pkcs11:token=" + tok.label + "?module-path=" + tok.module + "&pin-source=file:" + tok.pinFile}},
		{"uri slot-id", Config{URI: fmt.Sprintf("pkcs11:slot-id=%d?module-path=%s", tok.slot, tok.module)}},
		{"only token", Config{Module: tok.module}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.cfg.PIN == nil && !strings.Contains(c.cfg.URI, "pin-source") {
				c.cfg.PIN = PINValue([]byte(tok.userPIN))
			}
			p, err := Open(bg, c.cfg)
			require.NoError(t, err)
			defer p.Close()
			assert.Equal(t, tok.label, p.Token().Label)
			assert.Equal(t, tok.serial, p.Token().Serial)
		})
	}
	t.Run("not found lists tokens", func(t *testing.T) {
		for _, cfg := range []Config{
			{Module: tok.module, TokenLabel: "no-such-token"},
			{Module: tok.module, TokenSerial: "ffff"},
			{Module: tok.module, Slot: &other},
			{Module: tok.module, TokenLabel: tok.label, TokenSerial: "ffff"},
		} {
			cfg.PIN = PINValue([]byte(tok.userPIN))
			_, err := Open(bg, cfg)
			require.ErrorIs(t, err, ErrNotFound)
			var tnf *TokenNotFoundError
			require.ErrorAs(t, err, &tnf)
			assert.Contains(t, err.Error(), tok.label, "the error lists the tokens present")
			assert.NotEmpty(t, tnf.Tokens)
		}
	})
	t.Run("uri contradicts config", func(t *testing.T) {
		_, err := Open(bg, Config{Module: tok.module, TokenLabel: "a", URI: "pkcs11:token=b", PIN: PINValue([]byte("x"))})
		require.ErrorIs(t, err, ErrConfig)
	})
	t.Run("malformed uri names the part", func(t *testing.T) {
		for uri, part := range map[string]string{
			"pkcs12:token=x":                "scheme",
			"pkcs11:token=x;token=y":        "token",
			"pkcs11:slot-id=abc":            "slot-id",
			"pkcs11:token=%zz":              "percent",
			"pkcs11:token=a?module-path=%4": "percent",
			"pkcs11:frobnicate=1":           "frobnicate",
		} {
			_, err := Open(bg, Config{URI: uri})
			require.ErrorIs(t, err, ErrConfig, uri)
			assert.Contains(t, err.Error(), part, uri)
		}
	})
	t.Run("no module", func(t *testing.T) {
		_, err := Open(bg, Config{TokenLabel: tok.label})
		require.ErrorIs(t, err, ErrConfig)
		_, err = Open(bg, Config{Module: filepath.Join(t.TempDir(), "missing.so"), PIN: PINValue([]byte("x"))})
		require.ErrorIs(t, err, ErrConfig)
	})
}

func TestPINSources(t *testing.T) {
	needToken(t)
	dir := t.TempDir()
	good := filepath.Join(dir, "pin")
	require.NoError(t, os.WriteFile(good, []byte(tok.userPIN+"\r\n"), 0o600))
	t.Setenv("HSMKEYS_TEST_PIN", tok.userPIN)
	prompts := 0
	prompt := PINPrompt(func(_ context.Context, ti TokenInfo) ([]byte, error) {
		prompts++
		assert.Equal(t, tok.label, ti.Label, "the prompt is told which token")
		return []byte(tok.userPIN), nil
	})
	for name, src := range map[string]PINSource{
		"value":  PINValue([]byte(tok.userPIN)),
		"file":   PINFile(good),
		"env":    PINEnv("HSMKEYS_TEST_PIN"),
		"prompt": prompt,
	} {
		t.Run(name, func(t *testing.T) {
			p, err := Open(bg, Config{Module: tok.module, TokenLabel: tok.label, PIN: src})
			require.NoError(t, err)
			require.NoError(t, p.Close())
		})
	}
	assert.Equal(t, 1, prompts, "the prompt is asked once per Open")

	empty := filepath.Join(dir, "empty")
	require.NoError(t, os.WriteFile(empty, nil, 0o600))
	for name, src := range map[string]PINSource{
		"missing file": PINFile(filepath.Join(dir, "nope")),
		"empty file":   PINFile(empty),
		"unset env":    PINEnv("HSMKEYS_TEST_UNSET_PIN"),
		"empty value":  PINValue(nil),
		"failing prompt": PINPrompt(func(context.Context, TokenInfo) ([]byte, error) {
			return nil, errors.New("no terminal")
		}),
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Open(bg, Config{Module: tok.module, TokenLabel: tok.label, PIN: src})
			require.ErrorIs(t, err, ErrPINSource, "an unreadable pin is an error, not an empty pin")
		})
	}
}

func TestPINNeverPrinted(t *testing.T) {
	secret := "s3cr3t-p1n-value"
	cfg := Config{Module: "/m.so", URI: "pkcs11:token=x?pin-value=" + secret, PIN: PINValue([]byte(secret))}
	for _, s := range []string{
		fmt.Sprint(cfg), fmt.Sprintf("%v", cfg), fmt.Sprintf("%+v", cfg), fmt.Sprintf("%#v", cfg),
		fmt.Sprint(cfg.PIN), fmt.Sprintf("%#v", cfg.PIN), fmt.Sprintf("%+v", cfg.PIN), fmt.Sprintf("%s", cfg.PIN),
		fmt.Sprintf("%x", cfg.PIN), fmt.Sprintf("%q", cfg.PIN),
	} {
		assert.NotContains(t, s, secret)
		assert.NotContains(t, s, fmt.Sprintf("%x", secret))
	}
	needToken(t)
	_, err := Open(bg, Config{Module: tok.module, TokenLabel: tok.label, PIN: PINValue([]byte(secret))})
	require.Error(t, err)
	assert.NotContains(t, err.Error(), secret)
	_, err = Open(bg, Config{URI: "pkcs11:token=" + tok.label + "?module-path=" + tok.module + "&pin-value=" + secret})
	require.Error(t, err)
	assert.NotContains(t, err.Error(), secret)
}

func TestWrongPIN(t *testing.T) {
	needToken(t)
	tries := 0
	_, err := Open(bg, Config{Module: tok.module, TokenLabel: tok.label,
		PIN: PINPrompt(func(context.Context, TokenInfo) ([]byte, error) {
			tries++
			return []byte("wrong-pin-0000"), nil
		})})
	var pe *PINError
	require.ErrorAs(t, err, &pe)
	assert.False(t, pe.SO)
	assert.False(t, pe.Locked)
	var te *TokenError
	require.ErrorAs(t, err, &te, "the raw CKR code is underneath")
	assert.Equal(t, uint(pkcs11.CKR_PIN_INCORRECT), te.Code)
	assert.Equal(t, 1, tries, "the PIN is asked for and tried once")
	// The right PIN still works: nothing was locked by a retry loop.
	p := openProvider(t)
	_, err = p.Generate(bg, AES128)
	require.NoError(t, err)
}

func TestTwoProvidersShareTheModule(t *testing.T) {
	a := openProvider(t)
	b, err := Open(bg, baseConfig())
	require.NoError(t, err, "a second login in the same process is already-logged-in, i.e. success")
	ka, err := a.Generate(bg, AES256)
	require.NoError(t, err)
	kb, err := b.Generate(bg, AES256)
	require.NoError(t, err)
	require.NoError(t, b.Close())
	require.NoError(t, b.Close(), "Close is idempotent")
	_, err = kb.Seal(bg, []byte("x"), nil)
	require.ErrorIs(t, err, ErrKeyDestroyed)
	// Closing b neither finalised the module nor logged a out.
	sealed, err := ka.Seal(bg, []byte("still here"), nil)
	require.NoError(t, err)
	pt, err := ka.Open(bg, sealed, nil)
	require.NoError(t, err)
	assert.Equal(t, "still here", string(pt))
	_, err = a.Generate(bg, AES128)
	require.NoError(t, err)
}

func TestSessionKeyAttributes(t *testing.T) {
	for _, policy := range []ExportPolicy{ExportTrusted, ExportNone} {
		p := openProvider(t, func(c *Config) { c.ExportPolicy = policy })
		raw := openRaw(t)
		exportable := policy == ExportTrusted
		for _, alg := range []Algorithm{AES128, AES256} {
			k, err := p.Generate(bg, alg)
			require.NoError(t, err)
			assert.Equal(t, exportable, k.Exportable())
			got := raw.bools(t, uint(k.obj),
				pkcs11.CKA_TOKEN, pkcs11.CKA_PRIVATE, pkcs11.CKA_SENSITIVE, pkcs11.CKA_EXTRACTABLE,
				pkcs11.CKA_WRAP_WITH_TRUSTED, pkcs11.CKA_ENCRYPT, pkcs11.CKA_DECRYPT, pkcs11.CKA_WRAP,
				pkcs11.CKA_UNWRAP, pkcs11.CKA_DERIVE, pkcs11.CKA_SIGN, pkcs11.CKA_VERIFY,
				pkcs11.CKA_ALWAYS_SENSITIVE, pkcs11.CKA_NEVER_EXTRACTABLE)
			assert.Equal(t, map[uint]bool{
				pkcs11.CKA_TOKEN: false, pkcs11.CKA_PRIVATE: true, pkcs11.CKA_SENSITIVE: true,
				pkcs11.CKA_EXTRACTABLE: exportable, pkcs11.CKA_WRAP_WITH_TRUSTED: exportable,
				pkcs11.CKA_ENCRYPT: true, pkcs11.CKA_DECRYPT: true, pkcs11.CKA_WRAP: false,
				pkcs11.CKA_UNWRAP: false, pkcs11.CKA_DERIVE: false, pkcs11.CKA_SIGN: false,
				pkcs11.CKA_VERIFY: false, pkcs11.CKA_ALWAYS_SENSITIVE: true, pkcs11.CKA_NEVER_EXTRACTABLE: !exportable,
			}, got, "%v %v", policy, alg)
			vl, err := raw.ctx.GetAttributeValue(raw.s, pkcs11.ObjectHandle(k.obj), []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, nil)})
			require.NoError(t, err)
			n, ok := ulongBytes(vl[0].Value)
			require.True(t, ok)
			assert.Equal(t, uint64(alg.bytes()), n)
			// The value cannot be read, by anyone in this process.
			_, err = raw.ctx.GetAttributeValue(raw.s, pkcs11.ObjectHandle(k.obj), []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)})
			require.ErrorIs(t, err, pkcs11.Error(pkcs11.CKR_ATTRIBUTE_SENSITIVE))
		}
		require.NoError(t, p.Close())
	}
}

func ulongBytes(b []byte) (uint64, bool) {
	var n uint64
	if len(b) != 8 && len(b) != 4 {
		return 0, false
	}
	for i := len(b) - 1; i >= 0; i-- { // little-endian host
		n = n<<8 | uint64(b[i])
	}
	return n, true
}

// The provider reads back what it asked for; a token that did not apply an
// attribute is caught. SoftHSM applies them all, so the check is shown to
// fire by asking it to verify a key against a policy the key does not have.
func TestPolicyReadBackCatchesMismatch(t *testing.T) {
	p := openProvider(t)
	k, err := p.Generate(bg, AES256)
	require.NoError(t, err)
	err = p.do(bg, func(s *p11.Session) error {
		return p.pool.VerifySessionKey(s, k.obj, p11.SecretKeySpec{Bytes: 32})
	})
	require.ErrorIs(t, err, p11.ErrPolicyIgnored)
	assert.Contains(t, err.Error(), "CKA_EXTRACTABLE")
	err = p.do(bg, func(s *p11.Session) error {
		return p.pool.VerifySessionKey(s, k.obj, p11.SecretKeySpec{Bytes: 16, Extractable: true, WrapWithTrusted: true})
	})
	require.ErrorIs(t, err, p11.ErrPolicyIgnored)
	assert.Contains(t, err.Error(), "CKA_VALUE_LEN")
	require.NoError(t, p.do(bg, func(s *p11.Session) error {
		return p.pool.VerifySessionKey(s, k.obj, p11.SecretKeySpec{Bytes: 32, Extractable: true, WrapWithTrusted: true})
	}))
}

func TestSealOpen(t *testing.T) {
	p := openProvider(t)
	for _, alg := range []Algorithm{AES128, AES256} {
		k, err := p.Generate(bg, alg)
		require.NoError(t, err)
		for _, size := range []int{0, 1, 15, 16, 17, 1024, 65536, 1 << 20} {
			msg := bytes.Repeat([]byte{byte(size)}, size)
			aad := []byte(fmt.Sprintf("aad %d", size))
			sealed, err := k.Seal(bg, msg, aad)
			require.NoError(t, err)
			require.Len(t, sealed, size+Overhead)
			if size >= 16 {
				assert.False(t, bytes.Contains(sealed, msg), "ciphertext is not the plaintext")
			}
			got, err := k.Open(bg, sealed, aad)
			require.NoError(t, err)
			assert.True(t, bytes.Equal(msg, got), "size %d", size)
		}
		// Two seals of one message differ: fresh nonces.
		a, err := k.Seal(bg, []byte("same"), nil)
		require.NoError(t, err)
		b, err := k.Seal(bg, []byte("same"), nil)
		require.NoError(t, err)
		assert.NotEqual(t, a[:12], b[:12])
	}
}

func TestOpenRejectsTampering(t *testing.T) {
	p := openProvider(t)
	k, err := p.Generate(bg, AES256)
	require.NoError(t, err)
	other, err := p.Generate(bg, AES256)
	require.NoError(t, err)
	msg := []byte("attack at dawn, bring the keys")
	aad := []byte("context")
	sealed, err := k.Seal(bg, msg, aad)
	require.NoError(t, err)
	// Every single bit of nonce, ciphertext and tag matters.
	for i := 0; i < len(sealed)*8; i++ {
		bad := bytes.Clone(sealed)
		bad[i/8] ^= 1 << (i % 8)
		pt, err := k.Open(bg, bad, aad)
		require.ErrorIs(t, err, ErrAuthentication, "bit %d", i)
		require.Nil(t, pt)
	}
	for name, c := range map[string]struct {
		k      *Key
		sealed []byte
		aad    []byte
	}{
		"wrong aad":   {k, sealed, []byte("contexT")},
		"missing aad": {k, sealed, nil},
		"wrong key":   {other, sealed, aad},
		"truncated":   {k, sealed[:len(sealed)-1], aad},
		"tag only":    {k, sealed[:Overhead], aad},
		"too short":   {k, sealed[:Overhead-1], aad},
		"empty":       {k, nil, aad},
		"appended":    {k, append(bytes.Clone(sealed), 0), aad},
	} {
		pt, err := c.k.Open(bg, c.sealed, c.aad)
		require.ErrorIs(t, err, ErrAuthentication, name)
		require.Nil(t, pt, name)
	}
	// The session that saw the failures is still usable.
	got, err := k.Open(bg, sealed, aad)
	require.NoError(t, err)
	assert.Equal(t, msg, got)
}

func TestDestroy(t *testing.T) {
	p := openProvider(t)
	raw := openRaw(t)
	before := raw.sessionKeys(t)
	k, err := p.Generate(bg, AES256)
	require.NoError(t, err)
	require.True(t, raw.exists(uint(k.obj)))
	assert.Equal(t, before+1, raw.sessionKeys(t))
	require.NoError(t, k.Destroy(bg))
	assert.False(t, raw.exists(uint(k.obj)), "a fresh session no longer finds the key")
	assert.Equal(t, before, raw.sessionKeys(t))
	require.NoError(t, k.Destroy(bg), "Destroy is idempotent")
	_, err = k.Seal(bg, []byte("x"), nil)
	require.ErrorIs(t, err, ErrKeyDestroyed)
	_, err = k.Open(bg, make([]byte, 40), nil)
	require.ErrorIs(t, err, ErrKeyDestroyed)
}

func TestCloseDestroysEverything(t *testing.T) {
	needToken(t)
	raw := openRaw(t)
	before := raw.sessionKeys(t)
	p, err := Open(bg, baseConfig())
	require.NoError(t, err)
	var keys []*Key
	for i := 0; i < 10; i++ {
		k, err := p.Generate(bg, AES128)
		require.NoError(t, err)
		keys = append(keys, k)
	}
	require.Equal(t, before+10, raw.sessionKeys(t))
	require.NoError(t, p.Close())
	assert.Equal(t, before, raw.sessionKeys(t), "no objects left behind")
	for _, k := range keys {
		assert.False(t, raw.exists(uint(k.obj)))
		_, err := k.Seal(bg, []byte("x"), nil)
		require.ErrorIs(t, err, ErrKeyDestroyed)
		require.NoError(t, k.Destroy(bg))
	}
	require.NoError(t, p.Close())
	_, err = p.Generate(bg, AES256)
	require.ErrorIs(t, err, ErrClosed)
	_, err = p.CountSessionKeys(bg)
	require.ErrorIs(t, err, ErrClosed)
}

func TestKeyLostWhenSessionsClosedUnderUs(t *testing.T) {
	p := openProvider(t, func(c *Config) { c.MaxSessions = 4 })
	var keys []*Key
	for i := 0; i < 8; i++ {
		k, err := p.Generate(bg, AES256)
		require.NoError(t, err)
		keys = append(keys, k)
	}
	sealed, err := keys[0].Seal(bg, []byte("before"), nil)
	require.NoError(t, err)

	// Another part of the process closes every session on the slot: the
	// token forgets the login and every session object (TOKEN-FACTS).
	closer := pkcs11.New(tok.module)
	require.NotNil(t, closer)
	_ = closer.Initialize()
	require.NoError(t, closer.CloseAllSessions(tok.slot))
	closer.Destroy()

	for i, k := range keys {
		_, err := k.Seal(bg, []byte("after"), nil)
		require.ErrorIs(t, err, ErrKeyLost, "key %d", i)
		assert.NotContains(t, err.Error(), "CKR_OBJECT_HANDLE_INVALID")
		_, err = k.Open(bg, sealed, nil)
		require.ErrorIs(t, err, ErrKeyLost)
		require.NoError(t, k.Destroy(bg), "destroying a lost key succeeds: it is gone")
	}
	// New work succeeds on fresh, logged-in sessions.
	k, err := p.Generate(bg, AES256)
	require.NoError(t, err)
	s2, err := k.Seal(bg, []byte("after recovery"), nil)
	require.NoError(t, err)
	pt, err := k.Open(bg, s2, nil)
	require.NoError(t, err)
	assert.Equal(t, "after recovery", string(pt))
	assert.LessOrEqual(t, p.Sessions(), 4)
	assert.GreaterOrEqual(t, p.pool.Relogins(), 1, "the login was restored")
}

func TestSealLimit(t *testing.T) {
	p := openProvider(t, func(c *Config) { c.MaxSealsPerKey = 3 })
	k, err := p.Generate(bg, AES128)
	require.NoError(t, err)
	var sealed []byte
	for i := 0; i < 3; i++ {
		sealed, err = k.Seal(bg, []byte("m"), nil)
		require.NoError(t, err)
	}
	_, err = k.Seal(bg, []byte("m"), nil)
	require.ErrorIs(t, err, ErrKeyExhausted)
	_, err = k.Open(bg, sealed, nil)
	require.NoError(t, err, "decryption is not limited")
}

func TestBadInput(t *testing.T) {
	p := openProvider(t)
	_, err := p.Generate(bg, Algorithm(0))
	require.ErrorIs(t, err, ErrInvalidInput)
	_, err = p.Generate(bg, Algorithm(99))
	require.ErrorIs(t, err, ErrInvalidInput)
	var nilKey *Key
	_, err = nilKey.Seal(bg, []byte("x"), nil)
	require.ErrorIs(t, err, ErrInvalidInput)
	_, err = nilKey.Open(bg, make([]byte, 64), nil)
	require.ErrorIs(t, err, ErrInvalidInput)
	require.ErrorIs(t, nilKey.Destroy(bg), ErrInvalidInput)
	k, err := p.Generate(bg, AES256)
	require.NoError(t, err)
	_, err = k.Seal(bg, make([]byte, MaxSealSize+1), nil)
	require.ErrorIs(t, err, ErrInvalidInput)
	_, err = k.Open(bg, make([]byte, MaxSealSize+Overhead+1), nil)
	require.ErrorIs(t, err, ErrInvalidInput)
	_, err = ParseAlgorithm("des")
	require.ErrorIs(t, err, ErrInvalidInput)
	cancelled, cancel := context.WithCancel(bg)
	cancel()
	_, err = p.Generate(cancelled, AES256)
	require.ErrorIs(t, err, context.Canceled)
}

func TestPoolWaitHonoursContext(t *testing.T) {
	p := openProvider(t, func(c *Config) { c.MaxSessions = 1 })
	k, err := p.Generate(bg, AES256)
	require.NoError(t, err)
	// Hold the only session until the callers below have given up: they
	// cannot get it, however slow the machine.
	started, release := make(chan struct{}), make(chan struct{})
	done := make(chan error, 1)
	go func() {
		err := p.do(bg, func(s *p11.Session) error {
			close(started)
			<-release
			return nil
		})
		done <- err
	}()
	<-started
	ctx, cancel := context.WithTimeout(bg, 50*time.Millisecond)
	defer cancel()
	_, err = p.Generate(ctx, AES128)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	_, err = k.Seal(ctx, []byte("x"), nil)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	close(release)
	require.NoError(t, <-done)
	// Once the session is back, work goes on.
	_, err = k.Seal(bg, []byte("x"), nil)
	require.NoError(t, err)
	assert.Equal(t, 1, p.Sessions())
}

func TestCloseWaitsForWorkInFlight(t *testing.T) {
	needToken(t)
	p, err := Open(bg, baseConfig())
	require.NoError(t, err)
	k, err := p.Generate(bg, AES256)
	require.NoError(t, err)
	began, release := make(chan error, 1), make(chan struct{})
	var finished atomic.Bool
	go func() {
		err := p.begin()
		began <- err
		if err != nil {
			return
		}
		defer p.end()
		<-release
		finished.Store(true)
	}()
	require.NoError(t, <-began, "the operation is in flight before Close")
	closed := make(chan struct{})
	go func() { _ = p.Close(); close(closed) }()
	// Close must not return before release: a wrong Close is caught here
	// (at the latest) after 100 ms, a right one passes however slow the
	// machine.
	select {
	case <-closed:
		t.Fatal("Close returned while an operation was in flight")
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	<-closed
	assert.True(t, finished.Load())
	_, err = k.Seal(bg, nil, nil)
	require.ErrorIs(t, err, ErrKeyDestroyed)
}

func TestConcurrentUse(t *testing.T) {
	needToken(t)
	raw := openRaw(t)
	before := raw.sessionKeys(t)
	leaks := goleak.IgnoreCurrent()
	p, err := Open(bg, Config{Module: tok.module, TokenLabel: tok.label, PIN: PINValue([]byte(tok.userPIN)), MaxSessions: 8})
	require.NoError(t, err)
	shared, err := p.Generate(bg, AES256)
	require.NoError(t, err)
	const workers, rounds = 32, 20
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < rounds; i++ {
				k, err := p.Generate(bg, AES128)
				if err != nil {
					errs <- err
					return
				}
				msg := []byte(fmt.Sprintf("worker %d round %d", w, i))
				for _, key := range []*Key{k, shared} {
					s, err := key.Seal(bg, msg, []byte{byte(w)})
					if err != nil {
						errs <- err
						return
					}
					pt, err := key.Open(bg, s, []byte{byte(w)})
					if err != nil || !bytes.Equal(pt, msg) {
						errs <- fmt.Errorf("open: %v, %q", err, pt)
						return
					}
				}
				if i%2 == 0 {
					if err := k.Destroy(bg); err != nil {
						errs <- err
						return
					}
				}
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	assert.LessOrEqual(t, p.Sessions(), 8, "the pool stays bounded")
	assert.Equal(t, before+1+workers*rounds/2, raw.sessionKeys(t))
	require.NoError(t, p.Close())
	assert.Equal(t, before, raw.sessionKeys(t), "no objects leaked")
	assert.Equal(t, 0, p.pool.Open(), "no sessions leaked")
	goleak.VerifyNone(t, leaks)
}

func TestPolicyCheckFirstKey(t *testing.T) {
	p := openProvider(t, func(c *Config) { c.PolicyCheck = CheckFirstKey })
	raw := openRaw(t)
	for i := 0; i < 3; i++ {
		k, err := p.Generate(bg, AES256)
		require.NoError(t, err)
		got := raw.bools(t, uint(k.obj), pkcs11.CKA_SENSITIVE, pkcs11.CKA_EXTRACTABLE, pkcs11.CKA_WRAP_WITH_TRUSTED)
		assert.Equal(t, map[uint]bool{pkcs11.CKA_SENSITIVE: true, pkcs11.CKA_EXTRACTABLE: true, pkcs11.CKA_WRAP_WITH_TRUSTED: true}, got)
	}
	_, checked := p.checked.Load(p11.SecretKeySpec{Bytes: 32, Extractable: true, WrapWithTrusted: true})
	assert.True(t, checked, "the first key's policy was read back")
	_, checked = p.checked.Load(p11.SecretKeySpec{Bytes: 16, Extractable: true, WrapWithTrusted: true})
	assert.False(t, checked, "a kind not made yet is not marked")
	_, err := Open(bg, Config{Module: tok.module, TokenLabel: tok.label, PIN: PINValue([]byte(tok.userPIN)), PolicyCheck: PolicyCheck(9)})
	require.ErrorIs(t, err, ErrConfig)
}
