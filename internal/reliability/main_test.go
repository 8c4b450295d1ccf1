package reliability

// The test token: TestMain creates one SoftHSM token in a temporary
// directory, builds faultmod.so and points it at SoftHSM. Every provider of
// these tests opens the token through faultmod.so; the faults are set through
// one control file. Tests run one at a time (no t.Parallel): the faults, the
// login state and the stats counters are process-wide.

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hsmkeys/hsmkeys/internal/faultmod"
	"github.com/hsmkeys/hsmkeys/provider"
	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

const (
	tokenLabel = "hsmkeys-reliability"
	userPIN    = "rel-user-2468"
	soPIN      = "rel-so-1357"
)

var env struct {
	err    error // why there is no token; nil when set up
	target string
	so     string // faultmod.so
	ctl    *faultmod.Control
	stats  string // FAULTMOD_STATS
	// anchor keeps faultmod.so (and through it SoftHSM) initialised for the
	// whole run, as an application that loaded the library first would:
	// providers then never finalise it, and faultmod's counters run from
	// the start of the process. It holds no session, so the login state is
	// only ever that of the providers under test.
	anchor *pkcs11.Ctx
}

func TestMain(m *testing.M) {
	if soakChild() {
		// A process of TestSoakProcesses: the parent's token, found
		// through the environment it passed on (SOFTHSM2_CONF).
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "hsmkeys-reliability-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	env.err = setup(dir)
	code := m.Run()
	if env.anchor != nil {
		_ = env.anchor.Finalize()
		env.anchor.Destroy()
	}
	if code == 0 {
		// No test may leave a goroutine behind (a wedged waiter, a worker).
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goroutines leaked:", err)
			code = 1
		}
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

func softhsmModule() string {
	for _, m := range []string{"/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so", "/usr/local/lib/softhsm/libsofthsm2.so"} {
		if _, err := os.Stat(m); err == nil {
			return m
		}
	}
	return ""
}

func setup(dir string) error {
	env.target = softhsmModule()
	if env.target == "" {
		return errors.New("SoftHSM 2 is not installed (apt-get install softhsm2)")
	}
	if _, err := exec.LookPath("gcc"); err != nil {
		return fmt.Errorf("gcc is needed to build faultmod.so: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "tokens"), 0o700); err != nil {
		return err
	}
	conf := filepath.Join(dir, "softhsm2.conf")
	if err := os.WriteFile(conf, []byte("directories.tokendir = "+filepath.Join(dir, "tokens")+
		"\nobjectstore.backend = file\nlog.level = ERROR\n"), 0o600); err != nil {
		return err
	}
	so, err := faultmod.Build(filepath.Join(dir, "faultmod"))
	if err != nil {
		return err
	}
	env.so = so
	env.ctl = &faultmod.Control{Path: filepath.Join(dir, "faults")}
	env.stats = filepath.Join(dir, "stats")
	// Before anything loads a module: SoftHSM reads SOFTHSM2_CONF and
	// faultmod.so its FAULTMOD_* variables when they are loaded.
	if err := os.Setenv("SOFTHSM2_CONF", conf); err != nil {
		return err
	}
	for _, kv := range faultmod.Env(env.target, env.ctl.Path, env.stats) {
		k, v, _ := strings.Cut(kv, "=")
		if err := os.Setenv(k, v); err != nil {
			return err
		}
	}
	// Initialise through faultmod.so with no faults: SoftHSM is then loaded
	// once, by faultmod, for the whole process.
	if _, err := provider.InitToken(context.Background(), provider.InitTokenConfig{
		Module:  env.so,
		Label:   tokenLabel,
		SOPIN:   provider.PINValue([]byte(soPIN)),
		UserPIN: provider.PINValue([]byte(userPIN)),
	}); err != nil {
		return fmt.Errorf("init token: %w", err)
	}
	env.anchor = pkcs11.New(env.so)
	if env.anchor == nil {
		return fmt.Errorf("cannot load %s", env.so)
	}
	if err := env.anchor.Initialize(); err != nil {
		return fmt.Errorf("initialise %s: %w", env.so, err)
	}
	return nil
}

// need skips a test when SoftHSM or gcc is missing, except in CI, where a
// missing tool is a failure. It also starts the test with no faults.
func need(t *testing.T) {
	t.Helper()
	if env.err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI is set and the fault-injection token is missing: %v", env.err)
		}
		t.Skipf("no fault-injection token: %v", env.err)
	}
	require.NoError(t, env.ctl.Clear())
}

// setFaults replaces the fault configuration. The faults are cleared when
// the next test starts (need), and before each provider is closed (open).
func setFaults(t *testing.T, lines ...string) {
	t.Helper()
	require.NoError(t, env.ctl.Set(lines...))
}

// fire replaces the fault configuration and makes one call through the
// anchor, so that one-shot lines (close_all_sessions, a token coming back)
// have taken effect when it returns. SoftHSM's C_CloseAllSessions frees the
// state of a session that another thread is using (a use-after-free that
// crashed C_Encrypt and C_GenerateKey now and then), so faultmod runs a
// close only once no call is inside SoftHSM, and lets none in meanwhile.
func fire(t *testing.T, lines ...string) {
	t.Helper()
	setFaults(t, lines...)
	_, err := env.anchor.GetInfo()
	require.NoError(t, err)
}

func config(maxSessions int) provider.Config {
	return provider.Config{
		Module:      env.so,
		TokenLabel:  tokenLabel,
		PIN:         provider.PINValue([]byte(userPIN)),
		MaxSessions: maxSessions,
	}
}

// open opens a provider through faultmod.so. At the end of the test the
// faults are cleared and then the provider is closed.
func open(t *testing.T, maxSessions int) *provider.Provider {
	t.Helper()
	p, err := provider.Open(context.Background(), config(maxSessions))
	require.NoError(t, err)
	t.Cleanup(func() {
		assert.NoError(t, env.ctl.Clear())
		assert.NoError(t, p.Close())
	})
	return p
}

// snapshot makes faultmod.so write its counters now and reads them. It
// replaces the fault configuration with lines (none: no faults). The stats
// are written by the call that loads the new control file, before that call
// is counted; the call is a C_GetInfo of the anchor, which touches no
// session and is spared by token_gone.
func snapshot(t *testing.T, lines ...string) *faultmod.Stats {
	t.Helper()
	if err := os.Remove(env.stats); err != nil && !errors.Is(err, fs.ErrNotExist) {
		require.NoError(t, err)
	}
	require.NoError(t, env.ctl.Set(append(lines, "stats")...))
	_, err := env.anchor.GetInfo()
	require.NoError(t, err)
	s, err := faultmod.ReadStats(env.stats)
	require.NoError(t, err)
	return s
}

// refused polls, while calls are in flight, how many C_OpenSession calls
// faultmod.so has refused, keeping the faults in lines. A call of another
// goroutine may load the control file before the anchor does and write the
// stats itself, a moment later than the anchor returns: a missing file then
// reads as "not yet", not as a failure.
func refused(lines ...string) (uint64, bool) {
	if err := os.Remove(env.stats); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return 0, false
	}
	if err := env.ctl.Set(append(lines, "stats")...); err != nil {
		return 0, false
	}
	if _, err := env.anchor.GetInfo(); err != nil {
		return 0, false
	}
	st, err := faultmod.ReadStats(env.stats)
	if err != nil {
		return 0, false
	}
	return st.Injected["C_OpenSession"], true
}

// roundTrip seals a fresh random message with k and opens it again.
func roundTrip(ctx context.Context, k *provider.Key, aad string) error {
	msg := make([]byte, 64)
	_, _ = rand.Read(msg)
	sealed, err := k.Seal(ctx, msg, []byte(aad))
	if err != nil {
		return err
	}
	got, err := k.Open(ctx, sealed, []byte(aad))
	if err != nil {
		return err
	}
	if string(got) != string(msg) {
		return errMismatch
	}
	return nil
}

var errMismatch = errors.New("open returned a plaintext that differs from the one sealed")

// tokenCode returns the CKR_* code of a *provider.TokenError inside err.
func tokenCode(err error) (uint, bool) {
	var te *provider.TokenError
	if errors.As(err, &te) {
		return te.Code, true
	}
	return 0, false
}

// safetyNet bounds the context of a test's operations. It catches a call
// that never returns; it is no expectation of speed (a loaded machine may
// be many times slower than an idle one), so it is minutes.
const safetyNet = 2 * time.Minute

// eventually waits until cond holds, checking every millisecond. It gives
// up, failing the test, only when the test's own deadline (go test
// -timeout) is near: waits are for events, not for durations.
func eventually(t *testing.T, cond func() bool, format string, args ...any) {
	t.Helper()
	var expire <-chan time.Time
	if d, ok := t.Deadline(); ok {
		left := time.Until(d)
		expire = time.After(left - min(left/10, 30*time.Second))
	}
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-tick.C:
		case <-expire:
			t.Fatalf("the test's deadline is near: "+format, args...)
		}
	}
}

// gate makes a file for a faultmod "hold" line; the calls it holds go on
// when release removes it (also at the end of the test). Make it after the
// provider (open): cleanups run last-first, and Close waits for the calls.
func gate(t *testing.T) (path string, release func()) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "gate")
	require.NoError(t, os.WriteFile(path, nil, 0o600))
	release = func() {
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			t.Error(err)
		}
	}
	t.Cleanup(release)
	return path, release
}

// waitHolding waits until faultmod.so says that n calls wait on a hold
// line (it writes the stats file when a hold begins).
func waitHolding(t *testing.T, n uint64) {
	t.Helper()
	eventually(t, func() bool {
		st, err := faultmod.ReadStats(env.stats)
		return err == nil && st.Holding >= n
	}, "%d calls never waited on the hold line", n)
}
