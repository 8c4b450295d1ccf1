package faultmod

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const (
	softhsmModule = "/usr/lib/softhsm/libsofthsm2.so"
	userPIN       = "1234"
	soPIN         = "5678"
)

// skipOrFail skips when a tool is missing, except under CI where the tools
// are part of the contract.
func skipOrFail(t *testing.T, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf(format, args...)
	}
	t.Skipf(format, args...)
}

func TestCheckLine(t *testing.T) {
	good := []string{
		"",
		"   # only a comment",
		"latency_us 1000",
		"latency_us C_Encrypt 500",
		"latency_us * 0x10",
		"fail C_Encrypt CKR_DEVICE_ERROR every 10",
		"fail * CKR_DEVICE_REMOVED from 100",
		"fail C_GenerateKey 0x30 prob 0.05 seed 7 count 3",
		"fail C_GenerateKey 48 after",
		"fail C_Initialize CKR_GENERAL_ERROR count 1 # named only",
		"max_sessions 4",
		"close_all_sessions",
		"token_gone 1",
		"token_gone 0",
		"token_gone",
		"token_gone CKR_DEVICE_REMOVED",
		"stats",
		"hold C_EncryptUpdate /tmp/hold",
		"hold * /tmp/hold every 2 from 3 count 1",
		"hold C_Initialize /tmp/hold count 0",
		"hold C_Encrypt /tmp/hold after",
		"hold C_Encrypt /tmp/hold after from 2 every 3",
		"personality iv-params",
		"personality cap16k iv-params",
		"personality no-gcm",
		"personality cryptoki-2.20",
		"personality unwrap-value-len tag-invalid",
	}
	for _, line := range good {
		t.Run("good/"+line, func(t *testing.T) {
			_, err := checkLine(line)
			require.NoError(t, err)
		})
	}
	bad := []string{
		"generation 3",
		"latency_us",
		"latency_us C_Encrpyt 5",
		"latency_us -5",
		"fail C_Encrypt",
		"fail C_Encrpyt CKR_DEVICE_ERROR",
		"fail C_Encrypt CKR_NO_SUCH_THING",
		"fail C_Encrypt 0",
		"fail C_Encrypt 0x100000000",
		"fail C_GetFunctionList CKR_GENERAL_ERROR",
		"fail C_Encrypt CKR_DEVICE_ERROR every 0",
		"fail C_Encrypt CKR_DEVICE_ERROR from 0",
		"fail C_Encrypt CKR_DEVICE_ERROR every",
		"fail C_Encrypt CKR_DEVICE_ERROR prob 1.5",
		"fail C_Encrypt CKR_DEVICE_ERROR sometimes 3",
		"max_sessions many",
		"close_all_sessions now",
		"token_gone 1 2",
		"token_gone maybe",
		"hold C_Encrypt",
		"hold C_Encrypt relative/path",
		"hold C_Nope /tmp/hold",
		"hold C_GetFunctionList /tmp/hold",
		"hold C_Encrypt /tmp/hold from 0",
		"hold C_Encrypt /tmp/hold every",
		"hold C_Encrypt /tmp/hold sometimes 2",
		"hold C_Encrypt /" + strings.Repeat("x", 1024),
		"personality",
		"personality cloudhsm",
		"explode",
	}
	for _, line := range bad {
		t.Run("bad/"+line, func(t *testing.T) {
			_, err := checkLine(line)
			require.Error(t, err)
		})
	}
}

func TestFunctionsMatchHeader(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "pkcs11h", "pkcs11f.h"))
	require.NoError(t, err)
	var names []string
	for _, m := range regexp.MustCompile(`CK_PKCS11_FUNCTION_INFO\((\w+)\)`).FindAllSubmatch(b, -1) {
		names = append(names, string(m[1]))
	}
	require.Equal(t, names, functions)
}

func TestCodesMatchPkcs11(t *testing.T) {
	// Spot-check the table against miekg's constants.
	want := map[string]uint{
		"CKR_DEVICE_ERROR":           pkcs11.CKR_DEVICE_ERROR,
		"CKR_DEVICE_REMOVED":         pkcs11.CKR_DEVICE_REMOVED,
		"CKR_SESSION_HANDLE_INVALID": pkcs11.CKR_SESSION_HANDLE_INVALID,
		"CKR_SESSION_CLOSED":         pkcs11.CKR_SESSION_CLOSED,
		"CKR_SESSION_COUNT":          pkcs11.CKR_SESSION_COUNT,
		"CKR_TOKEN_NOT_PRESENT":      pkcs11.CKR_TOKEN_NOT_PRESENT,
		"CKR_USER_NOT_LOGGED_IN":     pkcs11.CKR_USER_NOT_LOGGED_IN,
		"CKR_GENERAL_ERROR":          pkcs11.CKR_GENERAL_ERROR,
		"CKR_FUNCTION_FAILED":        pkcs11.CKR_FUNCTION_FAILED,
		"CKR_DEVICE_MEMORY":          pkcs11.CKR_DEVICE_MEMORY,
		"CKR_HOST_MEMORY":            pkcs11.CKR_HOST_MEMORY,
		"CKR_ARGUMENTS_BAD":          pkcs11.CKR_ARGUMENTS_BAD,
		"CKR_FUNCTION_CANCELED":      pkcs11.CKR_FUNCTION_CANCELED,
		"CKR_KEY_HANDLE_INVALID":     pkcs11.CKR_KEY_HANDLE_INVALID,
		"CKR_OBJECT_HANDLE_INVALID":  pkcs11.CKR_OBJECT_HANDLE_INVALID,
		"CKR_OPERATION_ACTIVE":       pkcs11.CKR_OPERATION_ACTIVE,
		"CKR_PIN_INCORRECT":          pkcs11.CKR_PIN_INCORRECT,
		"CKR_PIN_LOCKED":             pkcs11.CKR_PIN_LOCKED,
		"CKR_TOKEN_NOT_RECOGNIZED":   pkcs11.CKR_TOKEN_NOT_RECOGNIZED,

		"CKR_CRYPTOKI_NOT_INITIALIZED": pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED,
	}
	require.Len(t, codes, len(want))
	for name, v := range want {
		assert.Equal(t, uint32(v), codes[name], name)
	}
}

func TestControl(t *testing.T) {
	path := filepath.Join(t.TempDir(), "control")
	c := &Control{Path: path}
	require.NoError(t, c.Set("fail C_Encrypt CKR_DEVICE_ERROR every 3", "latency_us 5\nmax_sessions 2"))
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, "# written by faultmod.Control\ngeneration 1\n"+
		"fail C_Encrypt CKR_DEVICE_ERROR every 3\nlatency_us 5\nmax_sessions 2\n", string(b))
	fi1, err := os.Stat(path)
	require.NoError(t, err)

	require.NoError(t, c.Clear())
	b, err = os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, "# written by faultmod.Control\ngeneration 2\n", string(b))
	fi2, err := os.Stat(path)
	require.NoError(t, err)
	require.True(t, fi2.ModTime().After(fi1.ModTime()), "mtime must move forward")

	// A second Control on the same file continues the generations.
	c2 := &Control{Path: path}
	require.NoError(t, c2.Set("stats"))
	g, ok := fileGeneration(path)
	require.True(t, ok)
	require.Equal(t, uint64(3), g)

	// A malformed line writes nothing.
	require.Error(t, c.Set("stats", "fail C_Nope CKR_DEVICE_ERROR"))
	g, _ = fileGeneration(path)
	require.Equal(t, uint64(3), g)

	entries, err := os.ReadDir(filepath.Dir(path))
	require.NoError(t, err)
	require.Len(t, entries, 1, "no temporary files left behind")
}

func TestEnv(t *testing.T) {
	require.Equal(t, []string{"FAULTMOD_TARGET=/m.so", "FAULTMOD_CONTROL=/c", "FAULTMOD_STATS=/s"},
		Env("/m.so", "/c", "/s"))
	require.Equal(t, []string{"FAULTMOD_TARGET=/m.so"}, Env("/m.so", "", ""))
}

func TestReadStats(t *testing.T) {
	path := filepath.Join(t.TempDir(), "stats")
	require.NoError(t, os.WriteFile(path, []byte("# faultmod stats\ngeneration 4\nloads 3\n"+
		"load_errors 1\nopen_sessions 2\nholding 1\nheld 5\nclosing 1\nC_Encrypt calls 9 injected 3\n"), 0o600))
	s, err := ReadStats(path)
	require.NoError(t, err)
	require.Equal(t, &Stats{
		Generation: 4, Loads: 3, LoadErrors: 1, OpenSessions: 2, Holding: 1, Held: 5, Closing: true,
		Calls: map[string]uint64{"C_Encrypt": 9}, Injected: map[string]uint64{"C_Encrypt": 3},
	}, s)

	require.NoError(t, os.WriteFile(path, []byte("C_Encrypt calls x injected 3\n"), 0o600))
	_, err = ReadStats(path)
	require.Error(t, err)
}

func TestBuild(t *testing.T) {
	if _, err := exec.LookPath("gcc"); err != nil {
		skipOrFail(t, "gcc not found: %v", err)
	}
	dir := t.TempDir()
	so, err := Build(dir)
	require.NoError(t, err)
	fi, err := os.Stat(so)
	require.NoError(t, err)
	so2, err := Build(dir)
	require.NoError(t, err)
	require.Equal(t, so, so2)
	fi2, err := os.Stat(so2)
	require.NoError(t, err)
	require.Equal(t, fi.ModTime(), fi2.ModTime(), "built once")
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Len(t, entries, 1, "build directory removed")
}

// rig is one faultmod.so over one SoftHSM token. The real module is
// process-global, so TestModule is the only test that loads it.
type rig struct {
	ctx   *pkcs11.Ctx
	slot  uint
	ctl   *Control
	stats string
}

func newRig(t *testing.T) *rig {
	for _, tool := range []string{"gcc", "softhsm2-util"} {
		if _, err := exec.LookPath(tool); err != nil {
			skipOrFail(t, "%s not found: %v", tool, err)
		}
	}
	if _, err := os.Stat(softhsmModule); err != nil {
		skipOrFail(t, "SoftHSM module: %v", err)
	}
	dir := t.TempDir()
	so, err := Build(filepath.Join(dir, "build"))
	require.NoError(t, err)

	tokens := filepath.Join(dir, "tokens")
	require.NoError(t, os.Mkdir(tokens, 0o700))
	conf := filepath.Join(dir, "softhsm2.conf")
	require.NoError(t, os.WriteFile(conf, []byte(fmt.Sprintf(
		"directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n", tokens)), 0o600))
	t.Setenv("SOFTHSM2_CONF", conf)
	out, err := exec.Command("softhsm2-util", "--init-token", "--free", "--label", "t",
		"--pin", userPIN, "--so-pin", soPIN).CombinedOutput()
	require.NoError(t, err, "%s", out)

	r := &rig{ctl: &Control{Path: filepath.Join(dir, "control")}, stats: filepath.Join(dir, "stats")}
	require.NoError(t, r.ctl.Clear())
	for _, kv := range Env(softhsmModule, r.ctl.Path, r.stats) {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	r.ctx = pkcs11.New(so)
	require.NotNil(t, r.ctx, "load %s", so)
	require.NoError(t, r.ctx.Initialize())
	t.Cleanup(func() {
		_ = r.ctl.Clear()
		_ = r.ctx.Finalize()
		r.ctx.Destroy()
	})
	slots, err := r.ctx.GetSlotList(true)
	require.NoError(t, err)
	for _, s := range slots {
		ti, err := r.ctx.GetTokenInfo(s)
		require.NoError(t, err)
		if ti.Label == "t" {
			r.slot = s
		}
	}
	require.NotZero(t, r.slot, "token t not found")
	return r
}

// set replaces the faults for one subtest and clears them afterwards.
func (r *rig) set(t *testing.T, lines ...string) {
	t.Helper()
	require.NoError(t, r.ctl.Set(lines...))
	t.Cleanup(func() { require.NoError(t, r.ctl.Clear()) })
}

// open opens a logged-in read-write session, closed when the test ends.
func (r *rig) open(t *testing.T) pkcs11.SessionHandle {
	t.Helper()
	s, err := r.ctx.OpenSession(r.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	require.NoError(t, err)
	t.Cleanup(func() { _ = r.ctx.CloseSession(s) })
	// Login is per application: a second login says so.
	if err := r.ctx.Login(s, pkcs11.CKU_USER, userPIN); err != nil {
		require.ErrorIs(t, err, pkcs11.Error(pkcs11.CKR_USER_ALREADY_LOGGED_IN))
	}
	return s
}

func (r *rig) generateKey(s pkcs11.SessionHandle, label string) (pkcs11.ObjectHandle, error) {
	return r.ctx.GenerateKey(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)},
		[]*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
			pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, true),
			pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, true),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		})
}

func (r *rig) key(t *testing.T, s pkcs11.SessionHandle) pkcs11.ObjectHandle {
	t.Helper()
	k, err := r.generateKey(s, "k")
	require.NoError(t, err)
	return k
}

var iv = make([]byte, 16)

func cbc() []*pkcs11.Mechanism {
	return []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_CBC_PAD, iv)}
}

// encrypt runs one EncryptInit (which must succeed) and one Encrypt.
func (r *rig) encrypt(t *testing.T, s pkcs11.SessionHandle, k pkcs11.ObjectHandle) error {
	t.Helper()
	require.NoError(t, r.ctx.EncryptInit(s, cbc(), k), "EncryptInit")
	_, err := r.ctx.Encrypt(s, []byte("sixteen byte msg"))
	return err
}

func (r *rig) readStats(t *testing.T) *Stats {
	t.Helper()
	require.NoError(t, r.ctl.Set("stats"))
	_, err := r.ctx.GetInfo() // the module picks up the request on its next call
	require.NoError(t, err)
	st, err := ReadStats(r.stats)
	require.NoError(t, err)
	return st
}

func ckr(code uint) error { return pkcs11.Error(code) }

func TestModule(t *testing.T) {
	r := newRig(t)

	t.Run("forwarding", func(t *testing.T) {
		s := r.open(t)
		k := r.key(t, s)
		require.NoError(t, r.ctx.EncryptInit(s, cbc(), k))
		ct, err := r.ctx.Encrypt(s, []byte("hello"))
		require.NoError(t, err)
		require.NoError(t, r.ctx.DecryptInit(s, cbc(), k))
		pt, err := r.ctx.Decrypt(s, ct)
		require.NoError(t, err)
		require.Equal(t, "hello", string(pt))
	})

	t.Run("every", func(t *testing.T) {
		s := r.open(t)
		k := r.key(t, s)
		before := r.readStats(t)
		r.set(t, "fail C_Encrypt CKR_DEVICE_ERROR every 3")
		// miekg's Encrypt makes two C_Encrypt calls (length query, then the
		// data) and stops at the first error; model the C calls.
		n := 0
		for i := range 12 {
			want := true
			for range 2 {
				n++
				if n%3 == 0 {
					want = false
					break
				}
			}
			err := r.encrypt(t, s, k) // EncryptInit after a failure must work
			if want {
				require.NoError(t, err, "Encrypt %d", i)
			} else {
				require.ErrorIs(t, err, ckr(pkcs11.CKR_DEVICE_ERROR), "Encrypt %d", i)
			}
		}
		after := r.readStats(t)
		require.Equal(t, uint64(n), after.Calls["C_Encrypt"]-before.Calls["C_Encrypt"])
		require.Equal(t, uint64(n/3), after.Injected["C_Encrypt"]-before.Injected["C_Encrypt"])
	})

	t.Run("from and count", func(t *testing.T) {
		s := r.open(t)
		k := r.key(t, s)
		// GenerateRandom is one C call per miekg call.
		r.set(t, "fail C_GenerateRandom CKR_DEVICE_ERROR from 4 count 3")
		for i := 1; i <= 10; i++ {
			_, err := r.ctx.GenerateRandom(s, 8)
			if i >= 4 && i <= 6 {
				require.ErrorIs(t, err, ckr(pkcs11.CKR_DEVICE_ERROR), "call %d", i)
			} else {
				require.NoError(t, err, "call %d", i)
			}
		}
		// C_Encrypt: calls 1-4 (two Encrypts) pass, everything after fails.
		r.set(t, "fail C_Encrypt CKR_DEVICE_REMOVED from 5")
		require.NoError(t, r.encrypt(t, s, k))
		require.NoError(t, r.encrypt(t, s, k))
		for range 5 {
			require.ErrorIs(t, r.encrypt(t, s, k), ckr(pkcs11.CKR_DEVICE_REMOVED))
		}
	})

	t.Run("runtime change", func(t *testing.T) {
		s := r.open(t)
		_, err := r.ctx.GenerateRandom(s, 8)
		require.NoError(t, err)
		r.set(t, "fail C_GenerateRandom CKR_DEVICE_ERROR")
		_, err = r.ctx.GenerateRandom(s, 8)
		require.ErrorIs(t, err, ckr(pkcs11.CKR_DEVICE_ERROR))
		require.NoError(t, r.ctl.Set("fail C_GenerateRandom CKR_DEVICE_MEMORY"))
		_, err = r.ctx.GenerateRandom(s, 8)
		require.ErrorIs(t, err, ckr(pkcs11.CKR_DEVICE_MEMORY))
		require.NoError(t, r.ctl.Set("fail C_GenerateRandom 0x6"))
		_, err = r.ctx.GenerateRandom(s, 8)
		require.ErrorIs(t, err, ckr(pkcs11.CKR_FUNCTION_FAILED))
		require.NoError(t, r.ctl.Clear())
		_, err = r.ctx.GenerateRandom(s, 8)
		require.NoError(t, err)
	})

	t.Run("probability", func(t *testing.T) {
		s := r.open(t)
		pattern := func(rule string) []bool {
			r.set(t, rule)
			var p []bool
			for range 300 {
				_, err := r.ctx.GenerateRandom(s, 8)
				if err != nil {
					require.ErrorIs(t, err, ckr(pkcs11.CKR_FUNCTION_FAILED))
				}
				p = append(p, err != nil)
			}
			return p
		}
		a := pattern("fail C_GenerateRandom CKR_FUNCTION_FAILED prob 0.3 seed 7")
		failures := 0
		for _, f := range a {
			if f {
				failures++
			}
		}
		require.InDelta(t, 90, failures, 40)
		require.Equal(t, a, pattern("fail C_GenerateRandom CKR_FUNCTION_FAILED prob 0.3 seed 7"), "same seed, same faults")
		require.NotEqual(t, a, pattern("fail C_GenerateRandom CKR_FUNCTION_FAILED prob 0.3 seed 8"))
		b := pattern("fail C_GenerateRandom CKR_FUNCTION_FAILED prob 0.3 seed 7 count 5")
		require.Equal(t, 5, strings.Count(fmt.Sprint(b), "true"))
	})

	t.Run("star", func(t *testing.T) {
		s := r.open(t)
		r.set(t, "fail * CKR_GENERAL_ERROR")
		_, err := r.ctx.GetInfo()
		require.ErrorIs(t, err, ckr(pkcs11.CKR_GENERAL_ERROR))
		_, err = r.ctx.GetSlotList(true)
		require.ErrorIs(t, err, ckr(pkcs11.CKR_GENERAL_ERROR))
		_, err = r.ctx.GenerateRandom(s, 8)
		require.ErrorIs(t, err, ckr(pkcs11.CKR_GENERAL_ERROR))
		require.NoError(t, r.ctl.Clear())
		_, err = r.ctx.GenerateRandom(s, 8)
		require.NoError(t, err)
	})

	t.Run("failure ends the operation", func(t *testing.T) {
		gcm := func() []*pkcs11.Mechanism {
			return []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM,
				pkcs11.NewGCMParams(make([]byte, 12), nil, 128))}
		}
		for _, tc := range []struct {
			name string
			mech func() []*pkcs11.Mechanism
			rule string
			run  func(s pkcs11.SessionHandle, k pkcs11.ObjectHandle, m []*pkcs11.Mechanism) error
		}{
			{"encrypt update cbc", cbc, "fail C_EncryptUpdate CKR_DEVICE_ERROR count 1",
				func(s pkcs11.SessionHandle, k pkcs11.ObjectHandle, m []*pkcs11.Mechanism) error {
					if err := r.ctx.EncryptInit(s, m, k); err != nil {
						return err
					}
					_, err := r.ctx.EncryptUpdate(s, make([]byte, 32))
					return err
				}},
			{"encrypt gcm", gcm, "fail C_Encrypt CKR_DEVICE_ERROR count 1",
				func(s pkcs11.SessionHandle, k pkcs11.ObjectHandle, m []*pkcs11.Mechanism) error {
					if err := r.ctx.EncryptInit(s, m, k); err != nil {
						return err
					}
					_, err := r.ctx.Encrypt(s, make([]byte, 32))
					return err
				}},
			{"decrypt gcm after", gcm, "fail C_Decrypt CKR_DEVICE_ERROR count 1 after",
				func(s pkcs11.SessionHandle, k pkcs11.ObjectHandle, m []*pkcs11.Mechanism) error {
					if err := r.ctx.DecryptInit(s, m, k); err != nil {
						return err
					}
					_, err := r.ctx.Decrypt(s, make([]byte, 48))
					return err
				}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				s := r.open(t)
				k := r.key(t, s)
				r.set(t, tc.rule)
				require.ErrorIs(t, tc.run(s, k, tc.mech()), ckr(pkcs11.CKR_DEVICE_ERROR))
				// No CKR_OPERATION_ACTIVE: the failed call ended the operation.
				require.NoError(t, r.ctx.EncryptInit(s, tc.mech(), k))
				ct, err := r.ctx.Encrypt(s, []byte("after the fault"))
				require.NoError(t, err)
				require.NoError(t, r.ctx.DecryptInit(s, tc.mech(), k))
				pt, err := r.ctx.Decrypt(s, ct)
				require.NoError(t, err)
				require.Equal(t, "after the fault", string(pt))
			})
		}
	})

	t.Run("injected session loss closes the session", func(t *testing.T) {
		s := r.open(t)
		k := r.key(t, s)
		r.set(t, "fail C_Encrypt CKR_SESSION_HANDLE_INVALID count 1")
		require.ErrorIs(t, r.encrypt(t, s, k), ckr(pkcs11.CKR_SESSION_HANDLE_INVALID))
		// The rule is spent; the module underneath now says the same.
		require.ErrorIs(t, r.ctx.EncryptInit(s, cbc(), k), ckr(pkcs11.CKR_SESSION_HANDLE_INVALID))
	})

	t.Run("after", func(t *testing.T) {
		s := r.open(t)
		r.set(t, "fail C_GenerateKey CKR_DEVICE_ERROR after count 1")
		_, err := r.generateKey(s, "lost reply")
		require.ErrorIs(t, err, ckr(pkcs11.CKR_DEVICE_ERROR))
		// The key exists all the same.
		require.NoError(t, r.ctx.FindObjectsInit(s, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, "lost reply")}))
		found, _, err := r.ctx.FindObjects(s, 10)
		require.NoError(t, err)
		require.NoError(t, r.ctx.FindObjectsFinal(s))
		require.Len(t, found, 1)
		_, err = r.generateKey(s, "second")
		require.NoError(t, err)
	})

	t.Run("max sessions", func(t *testing.T) {
		r.set(t, "max_sessions 2")
		a := r.open(t)
		b := r.open(t)
		_, err := r.ctx.OpenSession(r.slot, pkcs11.CKF_SERIAL_SESSION)
		require.ErrorIs(t, err, ckr(pkcs11.CKR_SESSION_COUNT))
		require.NoError(t, r.ctx.CloseSession(a))
		c := r.open(t)
		_, err = r.ctx.OpenSession(r.slot, pkcs11.CKF_SERIAL_SESSION)
		require.ErrorIs(t, err, ckr(pkcs11.CKR_SESSION_COUNT))
		require.Equal(t, 2, r.readStatsKeeping(t, "max_sessions 2").OpenSessions)

		// Sessions the token dropped free their places.
		require.NoError(t, r.ctl.Set("max_sessions 2", "close_all_sessions"))
		d := r.open(t)
		require.ErrorIs(t, r.ctx.CloseSession(b), ckr(pkcs11.CKR_SESSION_HANDLE_INVALID))
		require.ErrorIs(t, r.ctx.CloseSession(c), ckr(pkcs11.CKR_SESSION_HANDLE_INVALID))
		require.NoError(t, r.ctx.CloseSession(d))
	})

	t.Run("close all sessions", func(t *testing.T) {
		s1 := r.open(t)
		s2 := r.open(t)
		k := r.key(t, s1)
		r.set(t, "close_all_sessions")
		require.ErrorIs(t, r.ctx.EncryptInit(s1, cbc(), k), ckr(pkcs11.CKR_SESSION_HANDLE_INVALID))
		_, err := r.ctx.GenerateRandom(s2, 8)
		require.ErrorIs(t, err, ckr(pkcs11.CKR_SESSION_HANDLE_INVALID))
		// Once per generation: new sessions keep working.
		s3 := r.open(t)
		k3 := r.key(t, s3)
		for range 5 {
			require.NoError(t, r.encrypt(t, s3, k3))
		}
		// A new generation with the same line fires again.
		require.NoError(t, r.ctl.Set("close_all_sessions"))
		require.ErrorIs(t, r.ctx.EncryptInit(s3, cbc(), k3), ckr(pkcs11.CKR_SESSION_HANDLE_INVALID))
		s4 := r.open(t)
		require.NoError(t, r.encrypt(t, s4, r.key(t, s4)))
	})

	t.Run("token gone", func(t *testing.T) {
		s := r.open(t)
		k := r.key(t, s)
		r.set(t, "token_gone 1")
		slots, err := r.ctx.GetSlotList(true)
		require.NoError(t, err)
		require.Empty(t, slots)
		slots, err = r.ctx.GetSlotList(false)
		require.NoError(t, err)
		require.Contains(t, slots, r.slot)
		si, err := r.ctx.GetSlotInfo(r.slot)
		require.NoError(t, err)
		require.Zero(t, si.Flags&pkcs11.CKF_TOKEN_PRESENT)
		_, err = r.ctx.OpenSession(r.slot, pkcs11.CKF_SERIAL_SESSION)
		require.ErrorIs(t, err, ckr(pkcs11.CKR_TOKEN_NOT_PRESENT))
		require.ErrorIs(t, r.ctx.EncryptInit(s, cbc(), k), ckr(pkcs11.CKR_TOKEN_NOT_PRESENT))
		_, err = r.ctx.GetTokenInfo(r.slot)
		require.ErrorIs(t, err, ckr(pkcs11.CKR_TOKEN_NOT_PRESENT))

		require.NoError(t, r.ctl.Set("token_gone CKR_DEVICE_REMOVED"))
		_, err = r.ctx.GenerateRandom(s, 8)
		require.ErrorIs(t, err, ckr(pkcs11.CKR_DEVICE_REMOVED))

		// Back: the slot list has it again, old handles are dead, new ones work.
		require.NoError(t, r.ctl.Clear())
		slots, err = r.ctx.GetSlotList(true)
		require.NoError(t, err)
		require.Contains(t, slots, r.slot)
		si, err = r.ctx.GetSlotInfo(r.slot)
		require.NoError(t, err)
		require.NotZero(t, si.Flags&pkcs11.CKF_TOKEN_PRESENT)
		require.ErrorIs(t, r.ctx.EncryptInit(s, cbc(), k), ckr(pkcs11.CKR_SESSION_HANDLE_INVALID))
		s2 := r.open(t) // logs in again: the restart logged us out
		require.NoError(t, r.encrypt(t, s2, r.key(t, s2)))
	})

	t.Run("latency", func(t *testing.T) {
		s := r.open(t)
		r.set(t, "latency_us 2000")
		start := time.Now()
		_, err := r.ctx.GetInfo()
		require.NoError(t, err)
		require.GreaterOrEqual(t, time.Since(start), 2*time.Millisecond)

		require.NoError(t, r.ctl.Set("latency_us C_GenerateRandom 3000"))
		start = time.Now()
		_, err = r.ctx.GenerateRandom(s, 8)
		require.NoError(t, err)
		require.GreaterOrEqual(t, time.Since(start), 3*time.Millisecond)
	})

	t.Run("concurrent", func(t *testing.T) {
		before := r.readStats(t)
		r.set(t, "fail C_Encrypt CKR_DEVICE_ERROR every 5", "latency_us C_EncryptInit 50")
		var wg sync.WaitGroup
		errs := make(chan error, 4)
		for range 4 {
			s := r.open(t)
			k := r.key(t, s)
			wg.Go(func() {
				for range 50 {
					if err := r.ctx.EncryptInit(s, cbc(), k); err != nil {
						errs <- err
						return
					}
					_, _ = r.ctx.Encrypt(s, []byte("concurrent"))
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			require.NoError(t, err)
		}
		after := r.readStats(t)
		calls := after.Calls["C_Encrypt"] - before.Calls["C_Encrypt"]
		require.Greater(t, calls, uint64(200))
		require.Equal(t, calls/5, after.Injected["C_Encrypt"]-before.Injected["C_Encrypt"])
	})

	t.Run("hold", func(t *testing.T) {
		s := r.open(t)
		gate := filepath.Join(t.TempDir(), "gate")
		require.NoError(t, os.WriteFile(gate, nil, 0o600))
		// Calls 1 and 2 pass; call 3 waits while the gate exists; count 1:
		// call 4 passes again even with the gate still there.
		r.set(t, "hold C_GenerateRandom "+gate+" from 3 count 1")
		for range 2 {
			_, err := r.ctx.GenerateRandom(s, 8)
			require.NoError(t, err)
		}
		returned := make(chan error, 1)
		go func() {
			_, err := r.ctx.GenerateRandom(s, 8)
			returned <- err
		}()
		// The event: the module says a call is waiting. The stats file is
		// rewritten when a hold starts; no other call runs meanwhile.
		for {
			select {
			case err := <-returned:
				t.Fatalf("the held call returned (%v) while the gate exists", err)
			default:
			}
			st, err := ReadStats(r.stats)
			if err == nil && st.Holding == 1 {
				break
			}
			time.Sleep(time.Millisecond)
		}
		select {
		case err := <-returned:
			t.Fatalf("the held call returned (%v) while the gate exists", err)
		default: // held: it cannot return before the gate goes
		}
		require.NoError(t, os.Remove(gate))
		require.NoError(t, <-returned)
		st, err := ReadStats(r.stats)
		require.NoError(t, err)
		require.Zero(t, st.Holding, "written again when the wait ends")
		require.Equal(t, uint64(1), st.Held)
		require.NoError(t, os.WriteFile(gate, nil, 0o600))
		_, err = r.ctx.GenerateRandom(s, 8) // count 1: not held again
		require.NoError(t, err)
	})

	t.Run("close waits for calls inside", func(t *testing.T) {
		s := r.open(t)
		gate := filepath.Join(t.TempDir(), "gate")
		require.NoError(t, os.WriteFile(gate, nil, 0o600))
		// The call reaches SoftHSM; its answer is held (a slow token).
		r.set(t, "hold C_GenerateRandom "+gate+" after count 1")
		returned := make(chan error, 1)
		go func() {
			_, err := r.ctx.GenerateRandom(s, 8)
			returned <- err
		}()
		waitStats := func(what string, cond func(*Stats) bool, closed <-chan error) {
			for {
				select {
				case err := <-returned:
					t.Fatalf("the held call returned (%v) before %s", err, what)
				case err := <-closed:
					t.Fatalf("the close ran (%v) before %s", err, what)
				default:
				}
				if st, err := ReadStats(r.stats); err == nil && cond(st) {
					return
				}
				time.Sleep(time.Millisecond)
			}
		}
		waitStats("the module held it", func(st *Stats) bool { return st.Holding == 1 }, nil)
		closed := make(chan error, 1)
		go func() {
			err := r.ctl.Set("close_all_sessions")
			if err == nil {
				_, err = r.ctx.GetInfo() // runs the close
			}
			closed <- err
		}()
		waitStats("the module said the close waits", func(st *Stats) bool { return st.Closing }, closed)
		require.NoError(t, os.Remove(gate))
		require.NoError(t, <-returned, "answered before the close")
		require.NoError(t, <-closed)
		_, err := r.ctx.GenerateRandom(s, 8)
		require.ErrorIs(t, err, ckr(pkcs11.CKR_SESSION_HANDLE_INVALID), "the close ran after")
	})

	t.Run("every name and code loads", func(t *testing.T) {
		before := r.readStats(t).LoadErrors
		var lines []string
		for _, f := range functions {
			lines = append(lines, "latency_us "+f+" 0")
			if f != "C_GetFunctionList" {
				lines = append(lines, "fail "+f+" CKR_GENERAL_ERROR from 1000000000")
			}
			if f == "C_GetInfo" {
				lines = append(lines, "hold "+f+" /nonexistent/faultmod-hold every 2 from 1000000000 count 1")
			}
		}
		for name := range codes {
			lines = append(lines, "fail C_GetInfo "+name+" from 1000000000", "token_gone "+name)
		}
		lines = append(lines, "token_gone 0")
		for chunk := range slices.Chunk(lines, 2*maxRules-8) {
			r.set(t, append(chunk, "stats")...)
			_, err := r.ctx.GetInfo()
			require.NoError(t, err)
			st, err := ReadStats(r.stats)
			require.NoError(t, err)
			require.Equal(t, before, st.LoadErrors, "lines %q", chunk)
		}

		// The module counts lines Control would refuse, and skips them.
		writeRaw(t, r.ctl.Path, "generation 999999\nfail C_Nope CKR_DEVICE_ERROR\nstats\n")
		_, err := r.ctx.GetInfo()
		require.NoError(t, err)
		st, err := ReadStats(r.stats)
		require.NoError(t, err)
		require.Equal(t, before+1, st.LoadErrors)
		require.Equal(t, uint64(999999), st.Generation)
	})

	// Last: C_Finalize and C_Initialize.
	t.Run("finalize", func(t *testing.T) {
		require.NoError(t, r.ctl.Set("fail * CKR_GENERAL_ERROR"))
		_, err := r.ctx.GetInfo()
		require.ErrorIs(t, err, ckr(pkcs11.CKR_GENERAL_ERROR))
		require.NoError(t, r.ctx.Finalize(), "* spares C_Finalize")
		st, err := ReadStats(r.stats)
		require.NoError(t, err)
		require.Equal(t, uint64(1), st.Calls["C_Finalize"])
		require.Equal(t, uint64(0), st.Injected["C_Finalize"])
		require.Positive(t, st.Injected["C_GetInfo"])
		require.Positive(t, st.Calls["C_Encrypt"])

		require.NoError(t, r.ctx.Initialize(), "* spares C_Initialize")
		_, err = r.ctx.GetInfo()
		require.ErrorIs(t, err, ckr(pkcs11.CKR_GENERAL_ERROR))
		require.NoError(t, r.ctl.Clear())
		s := r.open(t)
		require.NoError(t, r.encrypt(t, s, r.key(t, s)))
		st = r.readStats(t)
		require.Equal(t, uint64(1), st.Calls["C_Initialize"], "counters restart at C_Initialize")
		require.Zero(t, st.Calls["C_Finalize"])
	})
}

// readStatsKeeping asks for stats while keeping the faults in lines.
func (r *rig) readStatsKeeping(t *testing.T, lines ...string) *Stats {
	t.Helper()
	require.NoError(t, r.ctl.Set(append(lines, "stats")...))
	_, err := r.ctx.GetInfo()
	require.NoError(t, err)
	s, err := ReadStats(r.stats)
	require.NoError(t, err)
	return s
}

// writeRaw replaces the control file without Control's checks.
func writeRaw(t *testing.T, path, body string) {
	t.Helper()
	tmp := path + ".raw"
	require.NoError(t, os.WriteFile(tmp, []byte(body), 0o600))
	require.NoError(t, os.Rename(tmp, path))
}

// TestPersonalities drives each personality through miekg/pkcs11 calls.
func TestPersonalities(t *testing.T) {
	r := newRig(t)
	s := r.open(t)
	k := r.key(t, s)
	chosen := []byte("chosen-iv-12")
	pt := []byte("a plaintext of 29 bytes .....")
	gcm := func(iv []byte) (*pkcs11.GCMParams, []*pkcs11.Mechanism) {
		p := pkcs11.NewGCMParams(iv, nil, 128)
		return p, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, p)}
	}
	decrypt := func(t *testing.T, iv, ct []byte) ([]byte, error) {
		p, m := gcm(iv)
		defer p.Free()
		require.NoError(t, r.ctx.DecryptInit(s, m, k))
		return r.ctx.Decrypt(s, ct)
	}
	model := func(t *testing.T) string {
		ti, err := r.ctx.GetTokenInfo(r.slot)
		require.NoError(t, err)
		return strings.TrimSpace(ti.ManufacturerID) + "/" + strings.TrimSpace(ti.Model)
	}

	t.Run("iv-params", func(t *testing.T) {
		r.set(t, "personality iv-params")
		assert.Equal(t, "hsmkeys faultmod/sim-iv-params", model(t))
		p, m := gcm(chosen)
		require.NoError(t, r.ctx.EncryptInit(s, m, k))
		ct, err := r.ctx.Encrypt(s, pt)
		require.NoError(t, err)
		used := p.IV()
		p.Free()
		require.Len(t, ct, len(pt)+16)
		assert.NotEqual(t, chosen, used, "the caller's iv is ignored")
		got, err := decrypt(t, used, ct)
		require.NoError(t, err)
		assert.Equal(t, pt, got)
	})
	t.Run("iv-append", func(t *testing.T) {
		r.set(t, "personality iv-append")
		p, m := gcm(chosen)
		require.NoError(t, r.ctx.EncryptInit(s, m, k))
		out, err := r.ctx.Encrypt(s, pt)
		p.Free()
		require.NoError(t, err)
		require.Len(t, out, len(pt)+16+12, "ct || tag || iv")
		iv, ct := out[len(out)-12:], out[:len(out)-12]
		assert.NotEqual(t, chosen, iv)
		got, err := decrypt(t, iv, ct)
		require.NoError(t, err)
		assert.Equal(t, pt, got)
		// Multi-part: the iv comes with the last part.
		p, m = gcm(chosen)
		require.NoError(t, r.ctx.EncryptInit(s, m, k))
		first, err := r.ctx.EncryptUpdate(s, pt)
		require.NoError(t, err)
		last, err := r.ctx.EncryptFinal(s)
		p.Free()
		require.NoError(t, err)
		out = append(first, last...)
		got, err = decrypt(t, out[len(out)-12:], out[:len(out)-12])
		require.NoError(t, err)
		assert.Equal(t, pt, got)
	})
	t.Run("cap16k", func(t *testing.T) {
		r.set(t, "personality cap16k")
		assert.Equal(t, "hsmkeys faultmod/sim CloudHSM", model(t))
		p, m := gcm(chosen)
		defer p.Free()
		require.NoError(t, r.ctx.EncryptInit(s, m, k))
		_, err := r.ctx.Encrypt(s, make([]byte, 16385))
		require.ErrorIs(t, err, ckr(pkcs11.CKR_DATA_LEN_RANGE))
		require.NoError(t, r.ctx.EncryptInit(s, m, k), "the refused call ended the operation")
		_, err = r.ctx.Encrypt(s, make([]byte, 16384))
		require.NoError(t, err)
	})
	t.Run("no-multipart-gcm", func(t *testing.T) {
		r.set(t, "personality no-multipart-gcm")
		p, m := gcm(chosen)
		defer p.Free()
		require.NoError(t, r.ctx.EncryptInit(s, m, k))
		_, err := r.ctx.EncryptUpdate(s, pt)
		require.ErrorIs(t, err, ckr(pkcs11.CKR_FUNCTION_NOT_SUPPORTED))
		require.NoError(t, r.ctx.EncryptInit(s, m, k), "the refused call ended the operation")
		_, err = r.ctx.Encrypt(s, pt)
		require.NoError(t, err, "single-part gcm works")
		require.NoError(t, r.ctx.EncryptInit(s, cbc(), k))
		_, err = r.ctx.EncryptUpdate(s, make([]byte, 16))
		require.NoError(t, err, "other mechanisms stream")
		_, err = r.ctx.EncryptFinal(s)
		require.NoError(t, err)
	})
	t.Run("tag-invalid", func(t *testing.T) {
		p, m := gcm(chosen)
		require.NoError(t, r.ctx.EncryptInit(s, m, k))
		ct, err := r.ctx.Encrypt(s, pt)
		p.Free()
		require.NoError(t, err)
		ct[len(ct)-1] ^= 1
		_, err = decrypt(t, chosen, ct)
		require.ErrorIs(t, err, ckr(pkcs11.CKR_GENERAL_ERROR), "softhsm's answer")
		r.set(t, "personality tag-invalid")
		_, err = decrypt(t, chosen, ct)
		require.ErrorIs(t, err, ckr(pkcs11.CKR_ENCRYPTED_DATA_INVALID))
	})
	t.Run("no-gcm", func(t *testing.T) {
		r.set(t, "personality no-gcm")
		ms, err := r.ctx.GetMechanismList(r.slot)
		require.NoError(t, err)
		for _, m := range ms {
			assert.NotContains(t, []uint{pkcs11.CKM_AES_GCM, pkcs11.CKM_AES_KEY_WRAP, pkcs11.CKM_AES_KEY_WRAP_PAD}, m.Mechanism)
		}
		p, m := gcm(chosen)
		defer p.Free()
		require.ErrorIs(t, r.ctx.EncryptInit(s, m, k), ckr(pkcs11.CKR_MECHANISM_INVALID))
	})
}
