// Package testopenssl gives the interop tests the OpenSSL commands to run
// against: every entry of HSMKEYS_TEST_OPENSSL (colon-separated paths,
// system first; scripts/test.sh sets it), or the openssl on PATH. Each is
// checked before use: `openssl version` names it, a probe message without
// authAttrs must decrypt (else it is unusable), and a probe with authAttrs
// tells whether it has the fix for openssl#26101/#31635 (OpenSSL 3.0.22,
// openssl#31695): older ones cannot parse an AuthEnvelopedData with
// authAttrs at all, nor use them as GCM AAD.
//
// Without a usable openssl the tests skip, except under CI (CI set), where
// they fail; under CI they also fail when no listed openssl has the fix,
// so the cases that need it always run somewhere.
package testopenssl

import (
	"bytes"
	_ "embed"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// Env names the variable that lists the openssl commands.
const Env = "HSMKEYS_TEST_OPENSSL"

// The probes are AES-256-GCM AuthEnvelopedData messages for one KEK
// recipient, key 00 01 .. 1f, id "hsmkeys-probe" (published: they protect
// nothing). probe-authattrs.pem carries authAttrs (content type and an
// encryption context); scripts/openssl-versions.sh --probe uses it too.
var (
	//go:embed probe-plain.pem
	probePlain []byte
	//go:embed probe-authattrs.pem
	probeAuthAttrs []byte
)

var (
	probeKEK = func() string {
		k := make([]byte, 32)
		for i := range k {
			k[i] = byte(i)
		}
		return hex.EncodeToString(k)
	}()
	probeID = hex.EncodeToString([]byte("hsmkeys-probe"))
)

// OpenSSL is one openssl command.
type OpenSSL struct {
	// Path is the command (a wrapper, for a build fetched by
	// scripts/openssl-versions.sh).
	Path string
	// Version is the first line of `openssl version`.
	Version string
	// AuthAttrs reports whether it parses AuthEnvelopedData authAttrs and
	// authenticates them (openssl#31695).
	AuthAttrs bool
}

// Name is the version number, for subtest names: "3.0.19".
func (o *OpenSSL) Name() string {
	if f := strings.Fields(o.Version); len(f) >= 2 {
		return f[1]
	}
	return filepath.Base(o.Path)
}

// Command returns an exec.Cmd running o with args.
func (o *OpenSSL) Command(args ...string) *exec.Cmd {
	return exec.Command(o.Path, args...)
}

// Run runs o with args; the error carries the arguments, the version and
// the output.
func (o *OpenSSL) Run(args ...string) ([]byte, error) {
	out, err := o.Command(args...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("%s (%s) %s: %w\n%s", o.Path, o.Version, strings.Join(args, " "), err, out)
	}
	return out, nil
}

// CanAuthAttrs reports whether o can run a case that needs authAttrs (a
// message or key with an encryption context); if not, it logs that the
// case does not run there and why.
func (o *OpenSSL) CanAuthAttrs(t testing.TB, what string) bool {
	t.Helper()
	if !o.AuthAttrs {
		t.Logf("%s: not run with %s, which can neither parse nor authenticate authAttrs (openssl#26101, #31635; fixed in 3.0.22 by #31695)", what, o.Version)
	}
	return o.AuthAttrs
}

var (
	once    sync.Once
	all     []*OpenSSL
	errAll  error // unusable entry
	missing string
)

func load() {
	var paths []string
	if v := os.Getenv(Env); v != "" {
		for _, p := range strings.Split(v, ":") {
			if p != "" {
				paths = append(paths, p)
			}
		}
	} else if p, err := exec.LookPath("openssl"); err == nil {
		paths = []string{p}
	} else {
		missing = "openssl is not installed (and " + Env + " is unset)"
		return
	}
	for _, p := range paths {
		o, err := check(p)
		if err != nil {
			errAll = err
			return
		}
		all = append(all, o)
	}
}

// Check runs the version command and the probes on the openssl at path:
// an error if it is unusable, else what it is and whether it has the fix.
func Check(path string) (*OpenSSL, error) { return check(path) }

func check(path string) (*OpenSSL, error) {
	o := &OpenSSL{Path: path}
	out, err := exec.Command(path, "version").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("%s version: %w: %s", path, err, out)
	}
	o.Version, _, _ = strings.Cut(strings.TrimSpace(string(out)), "\n")
	if got, err := o.decrypt(probePlain); err != nil || got != "hsmkeys openssl probe: plain\n" {
		return nil, fmt.Errorf("%s (%s) cannot decrypt a plain AuthEnvelopedData: %q, %v", path, o.Version, got, err)
	}
	got, err := o.decrypt(probeAuthAttrs)
	o.AuthAttrs = err == nil && got == "hsmkeys openssl probe: authattrs\n"
	return o, nil
}

func (o *OpenSSL) decrypt(msg []byte) (string, error) {
	cmd := o.Command("cms", "-decrypt", "-binary", "-inform", "PEM", "-secretkey", probeKEK, "-secretkeyid", probeID)
	cmd.Stdin = bytes.NewReader(msg)
	out, err := cmd.Output()
	return string(out), err
}

// All returns the openssl commands to test against, system first. It skips
// t when there is none, or fails it under CI; it fails t when one is
// unusable, and under CI when none has the authAttrs fix.
func All(t testing.TB) []*OpenSSL {
	t.Helper()
	once.Do(load)
	ci := os.Getenv("CI") != ""
	switch {
	case errAll != nil:
		t.Fatalf("unusable openssl: %v", errAll)
	case missing != "" && ci:
		t.Fatalf("CI is set and %s", missing)
	case missing != "":
		t.Skip(missing)
	}
	if ci {
		fixed := false
		for _, o := range all {
			fixed = fixed || o.AuthAttrs
		}
		if !fixed {
			var vs []string
			for _, o := range all {
				vs = append(vs, o.Version)
			}
			t.Fatalf("CI is set and no openssl in %s=%q (%s) reads authAttrs; scripts/test.sh fetches one (scripts/openssl-versions.sh --fixed)",
				Env, os.Getenv(Env), strings.Join(vs, "; "))
		}
	}
	return all
}

// First returns the first openssl of All (the system's), for tests that
// need just one.
func First(t testing.TB) *OpenSSL {
	t.Helper()
	return All(t)[0]
}

// Fixed returns the first openssl of All with the authAttrs fix, or nil
// (logged) when there is none (which All does not allow under CI).
func Fixed(t testing.TB) *OpenSSL {
	t.Helper()
	for _, o := range All(t) {
		if o.AuthAttrs {
			return o
		}
	}
	t.Logf("no openssl in %s reads authAttrs", Env)
	return nil
}

// Each runs f in one subtest per openssl, named by its version; the
// subtest logs the version and path it used.
func Each(t *testing.T, f func(t *testing.T, o *OpenSSL)) {
	t.Helper()
	for _, o := range All(t) {
		t.Run(o.Name(), func(t *testing.T) {
			t.Logf("using %s (%s), authAttrs %v", o.Version, o.Path, o.AuthAttrs)
			f(t, o)
		})
	}
}
