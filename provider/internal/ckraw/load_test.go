//go:build cgo && unix

package ckraw_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/require"

	"github.com/hsmkeys/hsmkeys/provider/internal/ckraw"
)

// buildFake compiles testdata/brokenmod.c with the given -D flags into a
// shared library of its own name (the loader caches libraries by name).
// The fake stands in for modules no real token gives us: one whose
// C_GetFunctionList fails, or hands every caller a new instance.
func buildFake(t *testing.T, name string, defines ...string) string {
	t.Helper()
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		missing(t, "gcc: %v", err)
	}
	out := filepath.Join(t.TempDir(), name+".so")
	args := []string{"-shared", "-fPIC", "-O0", "-I", "../../../internal/pkcs11h", "-o", out}
	for _, d := range defines {
		args = append(args, "-D"+d)
	}
	args = append(args, "testdata/brokenmod.c")
	b, err := exec.Command(gcc, args...).CombinedOutput()
	require.NoError(t, err, "gcc: %s", b)
	return out
}

// TestOpenBrokenModules: a module that cannot be loaded gives an error with
// the loader's or the module's reason, never a crash (issue 12: miekg
// ignored C_GetFunctionList's return value and crashed with SIGSEGV, and
// dropped dlerror()'s text).
func TestOpenBrokenModules(t *testing.T) {
	for _, tc := range []struct {
		name    string
		defines []string
		want    []string
	}{
		{"fail_list", []string{"FAIL_LIST"}, []string{"C_GetFunctionList", "CKR_HOST_MEMORY"}},
		{"null_list", []string{"NULL_LIST"}, []string{"C_GetFunctionList returned CKR_OK and no function list"}},
		{"no_symbol", []string{"NO_SYMBOL"}, []string{"not a PKCS#11 module", "undefined symbol: C_GetFunctionList"}},
		{"undefined", []string{"UNDEFINED"}, []string{"undefined symbol: hsmkeys_missing_symbol"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := buildFake(t, tc.name, tc.defines...)
			m, err := ckraw.Open(path, ckraw.Options{})
			require.Error(t, err)
			require.Nil(t, m)
			require.ErrorIs(t, err, ckraw.ErrLoad)
			require.Contains(t, err.Error(), path)
			for _, w := range tc.want {
				require.Contains(t, err.Error(), w)
			}
			t.Logf("%v", err)
		})
	}
	t.Run("no_file", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "libnothing.so")
		_, err := ckraw.Open(path, ckraw.Options{})
		require.ErrorIs(t, err, ckraw.ErrLoad)
		require.Contains(t, err.Error(), "No such file or directory", "dlerror's text is kept")
	})
	t.Run("not_a_library", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "text.so")
		require.NoError(t, os.WriteFile(path, []byte(strings.Repeat("not an ELF file\n", 16)), 0o600))
		_, err := ckraw.Open(path, ckraw.Options{})
		require.ErrorIs(t, err, ckraw.ErrLoad)
		require.Contains(t, err.Error(), "invalid ELF header")
	})
}

// info reads the fake module's report of what it was asked.
func info(t *testing.T, m *ckraw.Module) (desc, reserved string) {
	t.Helper()
	in, err := m.Ctx().GetInfo()
	require.NoError(t, err)
	return in.LibraryDescription, in.ManufacturerID
}

// TestOneInstancePerLibrary: however often and by whatever path a library
// is opened, it gets one C_GetFunctionList and one C_Initialize, and every
// Module calls through that one list. The fake makes a new instance per
// C_GetFunctionList, as p11-kit's proxy does; with a second call the
// counts below would be 2.
func TestOneInstancePerLibrary(t *testing.T) {
	path := buildFake(t, "instances")
	link := filepath.Join(t.TempDir(), "other-name.so")
	require.NoError(t, os.Symlink(path, link))

	a, err := ckraw.Open(path, ckraw.Options{})
	require.NoError(t, err)
	defer a.Close()
	require.True(t, a.Owner())
	b, err := ckraw.Open(path, ckraw.Options{})
	require.NoError(t, err)
	defer b.Close()
	c, err := ckraw.Open(link, ckraw.Options{})
	require.NoError(t, err)
	defer c.Close()

	// CKF_OS_LOCKING_OK (0x2) was passed (PKCS#11 v2.40 §5.4).
	const want = "lists=1 inits=1 flags=2"
	for _, m := range []*ckraw.Module{a, b, c} {
		desc, _ := info(t, m)
		require.Equal(t, want, desc)
	}

	// One instance, one configuration.
	_, err = ckraw.Open(link, ckraw.Options{InitArgs: "other"})
	require.ErrorIs(t, err, ckraw.ErrInitArgs)

	// Closing some Modules leaves the instance to the others.
	require.NoError(t, a.Close())
	require.NoError(t, b.Close())
	_, err = a.Ctx().GetInfo()
	require.ErrorIs(t, err, ckraw.ErrClosed)
	desc, _ := info(t, c)
	require.Equal(t, want, desc)

	// A NULL entry in the function list is an error, not a crash: the fake
	// fills in only C_Initialize, C_Finalize, C_GetInfo.
	_, err = c.Ctx().GetSlotList(true)
	require.ErrorIs(t, err, pkcs11.Error(pkcs11.CKR_FUNCTION_NOT_SUPPORTED))
	_, err = c.Encrypt(1, []byte("x"), 16)
	require.ErrorIs(t, err, pkcs11.Error(pkcs11.CKR_FUNCTION_NOT_SUPPORTED))
}

// TestInitArgs: Options.InitArgs reaches C_Initialize as pReserved, which a
// module such as NSS softoken requires (it answers CKR_ARGUMENTS_BAD
// without).
func TestInitArgs(t *testing.T) {
	path := buildFake(t, "initargs", "FAIL_INIT")
	_, err := ckraw.Open(path, ckraw.Options{})
	require.ErrorIs(t, err, pkcs11.Error(pkcs11.CKR_ARGUMENTS_BAD))
	require.True(t, ckraw.IsInitError(err))
	require.Contains(t, err.Error(), "C_Initialize")

	args := "configdir='sql:/x' flags=ro"
	m, err := ckraw.Open(path, ckraw.Options{InitArgs: args})
	require.NoError(t, err)
	defer m.Close()
	desc, reserved := info(t, m)
	require.Equal(t, args, reserved)
	// The failed Open unloaded the library (lists=1: counts start afresh)
	// or left it loaded without an instance (lists=2).
	require.Regexp(t, `^lists=[12] inits=1 flags=2$`, desc)

	_, err = ckraw.Open(path, ckraw.Options{InitArgs: "a\x00b"})
	require.ErrorIs(t, err, ckraw.ErrLoad)
}

const p11kitProxy = "/usr/lib/x86_64-linux-gnu/p11-kit-proxy.so"

// TestP11KitProxyOneInstance reproduces issue 13 on the real stack: through
// p11-kit's proxy (which registers SoftHSM from the softhsm2 package's
// /usr/share/p11-kit/modules/softhsm2.module) a session opened and logged
// in through one Module is the same session for a second Module opened by
// another path. With a second C_GetFunctionList, the second one is a new
// proxy instance: CKR_CRYPTOKI_NOT_INITIALIZED, or CKR_SESSION_HANDLE_INVALID.
func TestP11KitProxyOneInstance(t *testing.T) {
	if _, err := os.Stat(p11kitProxy); err != nil {
		missing(t, "p11-kit-proxy (package p11-kit-modules): %v", err)
	}
	util, err := exec.LookPath("softhsm2-util")
	if err != nil {
		missing(t, "softhsm2-util: %v", err)
	}
	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens")
	require.NoError(t, os.Mkdir(tokens, 0o700))
	conf := filepath.Join(dir, "softhsm2.conf")
	require.NoError(t, os.WriteFile(conf, []byte(fmt.Sprintf(
		"directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n", tokens)), 0o600))
	t.Setenv("SOFTHSM2_CONF", conf)
	out, err := exec.Command(util, "--init-token", "--free", "--label", "proxy-t",
		"--pin", userPIN, "--so-pin", soPIN).CombinedOutput()
	require.NoError(t, err, "softhsm2-util: %s", out)

	a, err := ckraw.Open(p11kitProxy, ckraw.Options{})
	require.NoError(t, err)
	defer a.Close()
	// The proxy is a symlink to libp11-kit; the loader gives one handle.
	real, err := filepath.EvalSymlinks(p11kitProxy)
	require.NoError(t, err)
	b, err := ckraw.Open(real, ckraw.Options{})
	require.NoError(t, err)
	defer b.Close()

	ca, cb := a.Ctx(), b.Ctx()
	slots, err := ca.GetSlotList(true)
	require.NoError(t, err)
	slot, found := uint(0), false
	for _, s := range slots {
		ti, err := ca.GetTokenInfo(s)
		if err == nil && ti.Label == "proxy-t" {
			slot, found = s, true
		}
	}
	require.True(t, found, "SoftHSM token not listed by p11-kit-proxy: is softhsm2.module registered?")

	s, err := ca.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	require.NoError(t, err)
	defer cb.CloseSession(s)
	require.NoError(t, ca.Login(s, pkcs11.CKU_USER, userPIN))
	si, err := cb.GetSessionInfo(s)
	require.NoError(t, err, "the second Module must see the first one's session")
	require.Equal(t, uint(pkcs11.CKS_RW_USER_FUNCTIONS), si.State)

	// A key made through one Module, used through the other, with a nested
	// template (Module's own methods) and a miekg-style call (Ctx).
	k, err := b.GenerateKey(uint(s), pkcs11.CKM_AES_KEY_GEN, []ckraw.Attr{
		{Type: pkcs11.CKA_TOKEN, Value: false}, {Type: pkcs11.CKA_VALUE_LEN, Value: uint(32)},
		{Type: pkcs11.CKA_ENCRYPT, Value: true},
	})
	require.NoError(t, err)
	require.NoError(t, ca.EncryptInit(s, []*ckraw.Mechanism{ckraw.NewMechanism(pkcs11.CKM_AES_ECB, nil)}, pkcs11.ObjectHandle(k)))
	ct, err := b.Encrypt(uint(s), make([]byte, 16), 16)
	require.NoError(t, err)
	require.Len(t, ct, 16)
	require.NoError(t, cb.FindObjectsInit(s, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY)}))
	hs, _, err := ca.FindObjects(s, 10)
	require.NoError(t, err)
	require.NoError(t, cb.FindObjectsFinal(s))
	require.Contains(t, hs, pkcs11.ObjectHandle(k))
	require.NoError(t, ca.Logout(s))
	if !strings.HasPrefix(filepath.Base(real), "libp11-kit") {
		t.Logf("p11-kit-proxy.so resolves to %s", real)
	}
}

// TestBuildWithoutCgo: without cgo, building hsmkeys stops with a message
// that says what is missing, not "build constraints exclude all Go files".
func TestBuildWithoutCgo(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the command")
	}
	gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
	cmd := exec.Command(gobin, "build", "-o", os.DevNull, "github.com/hsmkeys/hsmkeys/cmd/hsmkeys")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	require.Error(t, err, "%s", out)
	require.Contains(t, string(out), "hsmkeys_requires_cgo_and_dlopen")
	require.NotContains(t, string(out), "build constraints exclude all Go files")
}

// TestOneBindingInTheTree: outside this package's ckraw.go, no code of
// provider/ or cmd/ (tests aside) loads a module or fetches a function list
// itself, or calls PKCS#11 through miekg's Ctx: a second binding is
// impossible because there is no code that could make one.
func TestOneBindingInTheTree(t *testing.T) {
	forbidden := []string{"pkcs11.New(", "pkcs11.Ctx", "dlopen(", "C_GetFunctionList(", "dlsym("}
	for _, root := range []string{"../..", "../../../cmd"} {
		err := filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
				return err
			}
			if filepath.Base(path) == "ckraw.go" && filepath.Base(filepath.Dir(path)) == "ckraw" {
				return nil
			}
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			for _, f := range forbidden {
				require.NotContains(t, string(b), f, "%s: only provider/internal/ckraw/ckraw.go may load modules", path)
			}
			return nil
		})
		require.NoError(t, err)
	}
}
