package main

// Script tests: cmd/hsmkeys/testdata/script/*.txtar run the real command
// (this test binary, re-executed as "hsmkeys" by testscript) against a real
// SoftHSM token that each script makes in its own $WORK: Setup writes a
// softhsm2.conf and random PINs in mode-0600 files, and the script runs
// `hsmkeys init-token` with those files. No PIN is ever on a command line,
// and every run of hsmkeys checks that no PIN appears in what it printed.

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/miekg/pkcs11"
	"github.com/rogpeppe/go-internal/testscript"
)

func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){
		"hsmkeys": checkedMain,
		"badkek":  badKEKMain,
	})
}

// checkedMain is main, with stdout and stderr also kept and searched for
// the PINs of the test (listed in the file $HSMKEYS_TEST_SECRETS).
func checkedMain() {
	// A session of its own, with no controlling terminal: a script never
	// asks the developer who runs "go test" in a terminal for a PIN (the
	// prompt uses /dev/tty, whatever stdin is).
	_, _ = syscall.Setsid()
	var out, errOut bytes.Buffer
	code := run(os.Args[1:], os.Stdin, io.MultiWriter(os.Stdout, &out), io.MultiWriter(os.Stderr, &errOut))
	if secrets, err := os.ReadFile(os.Getenv("HSMKEYS_TEST_SECRETS")); err == nil {
		for _, s := range strings.Fields(string(secrets)) {
			if bytes.Contains(out.Bytes(), []byte(s)) || bytes.Contains(errOut.Bytes(), []byte(s)) {
				fmt.Fprintln(os.Stderr, "TEST FAILURE: a PIN appeared in the output of hsmkeys")
				os.Exit(99)
			}
		}
	}
	os.Exit(code)
}

func softhsmModule() string {
	for _, m := range softhsmModules {
		if _, err := os.Stat(m); err == nil {
			return m
		}
	}
	return ""
}

func TestScripts(t *testing.T) {
	module := softhsmModule()
	if _, err := exec.LookPath("softhsm2-util"); module == "" || err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("CI is set and SoftHSM 2 is missing (apt-get install softhsm2)")
		}
		t.Skip("SoftHSM 2 is not installed (apt-get install softhsm2)")
	}
	testscript.Run(t, testscript.Params{
		Dir:                 "testdata/script",
		RequireExplicitExec: true,
		Setup:               func(env *testscript.Env) error { return setupToken(env, module) },
		Condition:           condition,
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"flip":   cmdFlip,
			"perm":   cmdPerm,
			"notemp": cmdNoTemp,
		},
	})
}

// setupToken gives the script its own SoftHSM configuration and PIN files.
// The token itself is made by the script, with `hsmkeys init-token`.
func setupToken(env *testscript.Env, module string) error {
	dir := env.WorkDir
	tokens := filepath.Join(dir, "tokens")
	if err := os.MkdirAll(tokens, 0o700); err != nil {
		return err
	}
	conf := filepath.Join(dir, "softhsm2.conf")
	if err := os.WriteFile(conf, []byte("directories.tokendir = "+tokens+"\nobjectstore.backend = file\nlog.level = ERROR\n"), 0o600); err != nil {
		return err
	}
	var secrets []string
	for _, name := range []string{"user.pin", "so.pin", "wrong.pin"} {
		b := make([]byte, 8)
		if _, err := rand.Read(b); err != nil {
			return err
		}
		pin := hex.EncodeToString(b)
		secrets = append(secrets, pin)
		if err := os.WriteFile(filepath.Join(dir, name), []byte(pin+"\n"), 0o600); err != nil {
			return err
		}
	}
	env.Setenv("TEST_USER_PIN", secrets[0]) // for HSMKEYS_PIN: an environment variable, not argv
	secretsFile := filepath.Join(dir, ".secrets")
	if err := os.WriteFile(secretsFile, []byte(strings.Join(secrets, "\n")), 0o600); err != nil {
		return err
	}
	env.Setenv("SOFTHSM2_CONF", conf)
	env.Setenv("HSMKEYS_MODULE", module)
	env.Setenv("HSMKEYS_TOKEN", "test")
	env.Setenv("HSMKEYS_PIN_FILE", filepath.Join(dir, "user.pin"))
	env.Setenv("HSMKEYS_SO_PIN_FILE", filepath.Join(dir, "so.pin"))
	env.Setenv("HSMKEYS_TEST_SECRETS", secretsFile)
	env.Setenv("MODULE", module)
	// A -race binary sleeps a second at exit by default; the scripts run
	// hsmkeys some two hundred times.
	env.Setenv("GORACE", strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	return nil
}

// condition answers [openssl], [nss] (NSS softoken and certutil) and
// [p11kit] (p11-kit's proxy with SoftHSM registered): false skips a
// script, except under CI, where a missing part fails it.
func condition(cond string) (bool, error) {
	var need []string
	switch cond {
	case "openssl":
		need = []string{"openssl"}
	case "nss":
		need = []string{"certutil", "/usr/lib/x86_64-linux-gnu/libsoftokn3.so"}
	case "p11kit":
		need = []string{"/usr/lib/x86_64-linux-gnu/p11-kit-proxy.so", "/usr/share/p11-kit/modules/softhsm2.module"}
	default:
		return false, fmt.Errorf("unknown condition %q", cond)
	}
	for _, n := range need {
		var err error
		if strings.HasPrefix(n, "/") {
			_, err = os.Stat(n)
		} else {
			_, err = exec.LookPath(n)
		}
		if err != nil {
			if os.Getenv("CI") != "" {
				return false, fmt.Errorf("CI is set and %s is missing", n)
			}
			return false, nil
		}
	}
	return true, nil
}

// flip FILE OFFSET: flip the low bit of the byte at OFFSET (negative: from
// the end).
func cmdFlip(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: flip FILE OFFSET")
	}
	path := ts.MkAbs(args[0])
	b, err := os.ReadFile(path)
	ts.Check(err)
	off, err := strconv.Atoi(args[1])
	ts.Check(err)
	if off < 0 {
		off += len(b)
	}
	if off < 0 || off >= len(b) {
		ts.Fatalf("offset %s outside %d bytes", args[1], len(b))
	}
	b[off] ^= 1
	ts.Check(os.WriteFile(path, b, 0o600))
}

// perm FILE MODE: the file's permission bits are MODE (octal).
func cmdPerm(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 2 {
		ts.Fatalf("usage: perm FILE MODE")
	}
	st, err := os.Stat(ts.MkAbs(args[0]))
	ts.Check(err)
	want, err := strconv.ParseUint(args[1], 8, 32)
	ts.Check(err)
	if got := st.Mode().Perm(); (uint64(got) == want) == neg {
		ts.Fatalf("%s has mode %04o; want %s%04o", args[0], got, map[bool]string{true: "not ", false: ""}[neg], want)
	}
}

// notemp DIR...: no temporary file of hsmkeys is left in the directories.
func cmdNoTemp(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) == 0 {
		ts.Fatalf("usage: notemp DIR...")
	}
	for _, d := range args {
		entries, err := os.ReadDir(ts.MkAbs(d))
		ts.Check(err)
		for _, e := range entries {
			if strings.Contains(e.Name(), ".hsmkeys-") || strings.HasPrefix(e.Name(), "hsmkeys-") {
				ts.Fatalf("temporary file left behind: %s", filepath.Join(d, e.Name()))
			}
		}
	}
}

// badKEKMain makes a KEK that breaks hsmkeys' policy: an AES key the user
// made (so not trusted), modifiable, without templates. It talks to the
// module directly, as another program on the machine could; the user PIN
// comes from $HSMKEYS_PIN_FILE. Usage: badkek LABEL.
func badKEKMain() {
	if err := badKEK(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "badkek:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

func badKEK(args []string) error {
	if len(args) != 1 {
		return errors.New("usage: badkek LABEL")
	}
	ctx := pkcs11.New(os.Getenv("HSMKEYS_MODULE"))
	if ctx == nil {
		return errors.New("cannot load the module")
	}
	if err := ctx.Initialize(); err != nil {
		return err
	}
	defer ctx.Finalize()
	slots, err := ctx.GetSlotList(true)
	if err != nil {
		return err
	}
	for _, slot := range slots {
		info, err := ctx.GetTokenInfo(slot)
		if err != nil || strings.TrimRight(info.Label, " ") != os.Getenv("HSMKEYS_TOKEN") {
			continue
		}
		s, err := ctx.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
		if err != nil {
			return err
		}
		defer ctx.CloseSession(s)
		pin, err := os.ReadFile(os.Getenv("HSMKEYS_PIN_FILE"))
		if err != nil {
			return err
		}
		if err := ctx.Login(s, pkcs11.CKU_USER, strings.TrimSpace(string(pin))); err != nil {
			return err
		}
		value := make([]byte, 32)
		_, _ = rand.Read(value)
		_, err = ctx.CreateObject(s, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, false),
			pkcs11.NewAttribute(pkcs11.CKA_WRAP, true),
			pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, true),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, args[0]),
			pkcs11.NewAttribute(pkcs11.CKA_ID, []byte{0, 0, 0, 1, 0xba, 0xd0}),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE, value),
		})
		return err
	}
	return errors.New("token " + os.Getenv("HSMKEYS_TOKEN") + " not found")
}
