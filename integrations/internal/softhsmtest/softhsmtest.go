// Package softhsmtest makes the SoftHSM token the adapters' tests run
// against: a real token in a temporary directory, with RSA KEKs made the way
// hsmkeys makes them (provider.Admin). It is for tests only.
//
// SoftHSM reads its configuration once per process (at C_Initialize), so a
// test binary makes one token, in TestMain, before anything loads a module.
package softhsmtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/hsmkeys/hsmkeys/provider"
)

// The PINs of the test token, chosen by the tests.
const (
	UserPIN = "adapter-user-2468"
	SOPIN   = "adapter-so-1357"
)

// Token is a SoftHSM token made for a test binary.
type Token struct {
	Module  string // the module the tests open: SoftHSM, or one in front of it
	SoftHSM string // SoftHSM itself
	Label   string
	Dir     string
	PINFile string // holds UserPIN
	Err     error  // why there is no token
}

// SoftHSMModule is the path of SoftHSM 2, or "" if it is not installed.
func SoftHSMModule() string {
	for _, m := range []string{"/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
		"/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so", "/usr/local/lib/softhsm/libsofthsm2.so"} {
		if _, err := os.Stat(m); err == nil {
			return m
		}
	}
	return ""
}

// New makes a token labelled label in dir and points SOFTHSM2_CONF at it,
// for the whole process. through, if not nil, returns the module to open
// SoftHSM through (a fault module); it runs after SOFTHSM2_CONF is set. A
// missing SoftHSM is reported in Err, for Need.
func New(dir, label string, through func(softhsm string) (string, error)) *Token {
	tk := &Token{Label: label, Dir: dir, SoftHSM: SoftHSMModule()}
	tk.Err = tk.init(through)
	return tk
}

func (tk *Token) init(through func(string) (string, error)) error {
	if tk.SoftHSM == "" {
		return errors.New("SoftHSM 2 is not installed (apt-get install softhsm2)")
	}
	if _, err := exec.LookPath("softhsm2-util"); err != nil {
		return fmt.Errorf("softhsm2-util not found: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(tk.Dir, "tokens"), 0o700); err != nil {
		return err
	}
	conf := filepath.Join(tk.Dir, "softhsm2.conf")
	if err := os.WriteFile(conf, []byte("directories.tokendir = "+filepath.Join(tk.Dir, "tokens")+
		"\nobjectstore.backend = file\nlog.level = ERROR\n"), 0o600); err != nil {
		return err
	}
	if err := os.Setenv("SOFTHSM2_CONF", conf); err != nil {
		return err
	}
	tk.Module = tk.SoftHSM
	if through != nil {
		m, err := through(tk.SoftHSM)
		if err != nil {
			return err
		}
		tk.Module = m
	}
	tk.PINFile = filepath.Join(tk.Dir, "user.pin")
	if err := os.WriteFile(tk.PINFile, []byte(UserPIN+"\n"), 0o600); err != nil {
		return err
	}
	_, err := provider.InitToken(context.Background(), provider.InitTokenConfig{
		Module:  tk.Module,
		Label:   tk.Label,
		SOPIN:   provider.PINValue([]byte(SOPIN)),
		UserPIN: provider.PINValue([]byte(UserPIN)),
	})
	return err
}

// Need skips a test when there is no token, except in CI, where a missing
// token is a failure.
func (tk *Token) Need(t testing.TB) {
	t.Helper()
	if tk.Err == nil {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("CI is set and the SoftHSM token is missing: %v", tk.Err)
	}
	t.Skipf("no SoftHSM token: %v", tk.Err)
}

// Config opens the token with the user PIN from PINFile.
func (tk *Token) Config() provider.Config {
	return provider.Config{Module: tk.Module, TokenLabel: tk.Label, PIN: provider.PINFile(tk.PINFile)}
}

// Setenv sets the HSMKEYS_* variables the hsmkeys command reads to this
// token, for the rest of the test, and clears the others.
func (tk *Token) Setenv(t *testing.T) {
	t.Helper()
	for k, v := range tk.Env() {
		t.Setenv(k, v)
	}
}

// Env is what Setenv sets.
func (tk *Token) Env() map[string]string {
	return map[string]string{
		"HSMKEYS_MODULE": tk.Module, "HSMKEYS_TOKEN": tk.Label, "HSMKEYS_PIN_FILE": tk.PINFile,
		"HSMKEYS_URI": "", "HSMKEYS_PIN": "",
	}
}

// CreateKEK makes an RSA-2048 KEK named name (a new version if it exists)
// and returns it. It logs in as the SO: no provider of this process may be
// open on the token (provider.Admin).
//
// RSA, not AES: hsmkeys may refuse AES KEKs on SoftHSM, which keeps public
// objects in clear.
func (tk *Token) CreateKEK(ctx context.Context, name string) (*provider.KEK, error) {
	a, err := provider.OpenAdmin(ctx, tk.Config(), provider.PINValue([]byte(SOPIN)))
	if err != nil {
		return nil, err
	}
	defer a.Close()
	return a.CreateKEK(ctx, name, provider.KEKRSA2048)
}

// DestroyKEK destroys the KEK version with this CKA_ID; as CreateKEK, with
// no provider open.
func (tk *Token) DestroyKEK(ctx context.Context, id []byte) error {
	a, err := provider.OpenAdmin(ctx, tk.Config(), provider.PINValue([]byte(SOPIN)))
	if err != nil {
		return err
	}
	defer a.Close()
	return a.DestroyKEK(ctx, id)
}
