package provider

// The test token: every test in this package runs against one real SoftHSM
// token that TestMain creates in a temporary directory. SoftHSM reads its
// configuration once per process (at C_Initialize), so the token is shared.

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/require"
)

type testToken struct {
	module  string
	dir     string
	label   string
	serial  string
	slot    uint
	userPIN string // chosen by the test
	soPIN   string
	pinFile string
	err     error // why there is no token
}

var tok testToken

func softhsmModule() string {
	for _, m := range []string{"/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so", "/usr/local/lib/softhsm/libsofthsm2.so"} {
		if _, err := os.Stat(m); err == nil {
			return m
		}
	}
	return ""
}

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "hsmkeys-provider-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	switch {
	case os.Getenv("HSMKEYS_ATTACKER") != "":
		// The child of TestAttackers uses its parent's token, its own way.
		tok.err = fmt.Errorf("attacker child process")
	case os.Getenv("HSMKEYS_TEST_TOKEN") != "":
		// A child process of a test: the parent's token.
		tok.err = adoptToken(os.Getenv("HSMKEYS_TEST_TOKEN"))
	default:
		tok.err = setupToken(dir)
		switch flag.Parse(); {
		case tok.err != nil:
		case flag.Lookup("test.bench").Value.String() != "":
			tok.err = setupBench() // crypto11 holds the module
		default:
			tok.err = anchorModule()
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func setupToken(dir string) error {
	tok.dir = dir
	tok.module = softhsmModule()
	if tok.module == "" {
		return fmt.Errorf("SoftHSM 2 is not installed (apt-get install softhsm2)")
	}
	if _, err := exec.LookPath("softhsm2-util"); err != nil {
		return fmt.Errorf("softhsm2-util not found: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "tokens"), 0o700); err != nil {
		return err
	}
	conf := filepath.Join(dir, "softhsm2.conf")
	if err := os.WriteFile(conf, []byte("directories.tokendir = "+filepath.Join(dir, "tokens")+"\nobjectstore.backend = file\nlog.level = ERROR\n"), 0o600); err != nil {
		return err
	}
	os.Setenv("SOFTHSM2_CONF", conf)
	tok.label = "hsmkeys-test"
	tok.userPIN = "user-pin-1234"
	tok.soPIN = "so-pin-5678"
	tok.pinFile = filepath.Join(dir, "user.pin")
	if err := os.WriteFile(tok.pinFile, []byte(tok.userPIN+"\n"), 0o600); err != nil {
		return err
	}
	t, err := InitToken(context.Background(), InitTokenConfig{
		Module:  tok.module,
		Label:   tok.label,
		SOPIN:   PINValue([]byte(tok.soPIN)),
		UserPIN: PINValue([]byte(tok.userPIN)),
	})
	if err != nil {
		return err
	}
	tok.serial = t.Serial
	// SoftHSM renumbers slots once a token is initialised: look it up.
	ts, err := Tokens(tok.module)
	if err != nil {
		return err
	}
	for _, x := range ts {
		if x.Label == tok.label {
			tok.slot = x.Slot
			return nil
		}
	}
	return fmt.Errorf("initialised token %q not listed", tok.label)
}

// childEnv is the environment for a child process (the test binary run
// again) that must use this process's token.
func childEnv(extra ...string) []string {
	b, _ := json.Marshal(map[string]any{
		"module": tok.module, "label": tok.label, "serial": tok.serial, "slot": tok.slot,
		"user": tok.userPIN, "so": tok.soPIN, "pinfile": tok.pinFile,
	})
	return append(append(os.Environ(), "HSMKEYS_TEST_TOKEN="+string(b)), extra...)
}

func adoptToken(spec string) error {
	var v struct {
		Module, Label, Serial, User, SO, PINFile string
		Slot                                     uint
	}
	if err := json.Unmarshal([]byte(spec), &v); err != nil {
		return err
	}
	tok.module, tok.label, tok.serial, tok.slot = v.Module, v.Label, v.Serial, v.Slot
	tok.userPIN, tok.soPIN, tok.pinFile = v.User, v.SO, v.PINFile
	return anchorModule()
}

// anchorModule keeps the library initialised for the whole run, as an
// application that loaded it first would: providers then never finalise
// it, and the raw handles of the tests stay valid.
func anchorModule() error {
	anchor := pkcs11.New(tok.module)
	if anchor == nil {
		return fmt.Errorf("cannot load %s", tok.module)
	}
	return anchor.Initialize()
}

// needToken skips a test when there is no SoftHSM, except in CI, where a
// missing token is a failure.
func needToken(t testing.TB) {
	t.Helper()
	if tok.err == nil {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("CI is set and the SoftHSM token is missing: %v", tok.err)
	}
	t.Skipf("no SoftHSM token: %v", tok.err)
}

func baseConfig() Config {
	return Config{Module: tok.module, TokenLabel: tok.label, PIN: PINValue([]byte(tok.userPIN))}
}

// openProvider opens a provider on the test token and closes it at the end.
func openProvider(t testing.TB, edit ...func(*Config)) *Provider {
	t.Helper()
	needToken(t)
	cfg := baseConfig()
	for _, e := range edit {
		e(&cfg)
	}
	p, err := Open(context.Background(), cfg)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, p.Close()) })
	return p
}

// rawToken is a second, independent miekg handle on the same module: it
// sees the token as any other code of this process would, with its own
// session. It never finalises the shared library.
type rawToken struct {
	ctx *pkcs11.Ctx
	s   pkcs11.SessionHandle
}

func openRaw(t testing.TB) *rawToken {
	t.Helper()
	needToken(t)
	ctx := pkcs11.New(tok.module)
	require.NotNil(t, ctx)
	if err := ctx.Initialize(); err != nil {
		require.ErrorIs(t, err, pkcs11.Error(pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED))
	}
	s, err := ctx.OpenSession(tok.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	require.NoError(t, err)
	if err := ctx.Login(s, pkcs11.CKU_USER, tok.userPIN); err != nil {
		require.ErrorIs(t, err, pkcs11.Error(pkcs11.CKR_USER_ALREADY_LOGGED_IN))
	}
	r := &rawToken{ctx: ctx, s: s}
	t.Cleanup(func() {
		_ = ctx.CloseSession(s)
		ctx.Destroy()
	})
	return r
}

// sessionKeys counts secret-key session objects visible to this process.
func (r *rawToken) sessionKeys(t testing.TB) int {
	t.Helper()
	require.NoError(t, r.ctx.FindObjectsInit(r.s, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
	}))
	defer r.ctx.FindObjectsFinal(r.s)
	n := 0
	for {
		hs, _, err := r.ctx.FindObjects(r.s, 100)
		require.NoError(t, err)
		if len(hs) == 0 {
			return n
		}
		n += len(hs)
	}
}

// exists reports whether obj is still an object on the token.
func (r *rawToken) exists(obj uint) bool {
	_, err := r.ctx.GetAttributeValue(r.s, pkcs11.ObjectHandle(obj), []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, nil)})
	return err == nil
}

// bools reads boolean attributes of obj through the raw session.
func (r *rawToken) bools(t testing.TB, obj uint, types ...uint) map[uint]bool {
	t.Helper()
	q := make([]*pkcs11.Attribute, len(types))
	for i, ty := range types {
		q[i] = pkcs11.NewAttribute(ty, nil)
	}
	got, err := r.ctx.GetAttributeValue(r.s, pkcs11.ObjectHandle(obj), q)
	require.NoError(t, err)
	out := map[uint]bool{}
	for _, a := range got {
		require.Len(t, a.Value, 1, "attribute 0x%x", a.Type)
		out[a.Type] = a.Value[0] != 0
	}
	return out
}
