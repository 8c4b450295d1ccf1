// Package scripts holds the tests of the shell scripts in this directory.
package scripts

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func needSoftHSM(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("softhsm2-util"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI is set and SoftHSM is missing: %v", err)
		}
		t.Skip("softhsm2-util not installed")
	}
}

func runSetup(t *testing.T, config string, args ...string) string {
	t.Helper()
	cmd := exec.Command("bash", append([]string{"softhsm-setup.sh"}, args...)...)
	cmd.Env = append(os.Environ(), "SOFTHSM2_CONF=", "XDG_CONFIG_HOME="+config)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	return string(out)
}

// snapshot reads every regular file below dir (tokens included), so a second
// run can be shown to change nothing.
func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	files := map[string]string{}
	require.NoError(t, filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || strings.HasPrefix(p, filepath.Join(dir, "bin")) {
			return err
		}
		b, err := os.ReadFile(p)
		files[p] = string(b)
		return err
	}))
	return files
}

// envValue reads NAME='VALUE' from the env file the script writes.
func envValue(t *testing.T, env, name string) string {
	t.Helper()
	for _, line := range strings.Split(env, "\n") {
		line = strings.TrimPrefix(line, "export ")
		if v, ok := strings.CutPrefix(line, name+"="); ok {
			return strings.Trim(v, "'\"")
		}
	}
	t.Fatalf("%s not in the env file:\n%s", name, env)
	return ""
}

func TestSoftHSMSetupIsIdempotent(t *testing.T) {
	needSoftHSM(t)
	dir := filepath.Join(t.TempDir(), "hsm")
	config := t.TempDir()
	out := runSetup(t, config, "--dir", dir, "--label", "setup-test")
	assert.Contains(t, out, "initialising token")

	envb, err := os.ReadFile(filepath.Join(dir, "env"))
	require.NoError(t, err)
	env := string(envb)
	for _, v := range []string{"SOFTHSM2_CONF=", "HSMKEYS_MODULE=", "HSMKEYS_TOKEN='setup-test'", "HSMKEYS_PIN_FILE=", "HSMKEYS_SO_PIN_FILE="} {
		assert.Contains(t, env, v)
	}
	for _, f := range []string{"env", "softhsm2.conf"} {
		st, err := os.Stat(filepath.Join(dir, f))
		require.NoError(t, err)
		assert.Equal(t, os.FileMode(0o600), st.Mode().Perm(), f)
	}
	// The PIN files live apart from the token directory, so that a copy of
	// DIR (a backup of .softhsm/) does not carry the PINs with it.
	userPIN, soPIN := envValue(t, env, "HSMKEYS_PIN_FILE"), envValue(t, env, "HSMKEYS_SO_PIN_FILE")
	for _, f := range []string{userPIN, soPIN} {
		assert.True(t, strings.HasPrefix(f, config+string(filepath.Separator)), "%s is under XDG_CONFIG_HOME", f)
		assert.False(t, strings.HasPrefix(f, dir+string(filepath.Separator)), "%s is outside %s", f, dir)
		st, err := os.Stat(f)
		require.NoError(t, err)
		assert.Equal(t, os.FileMode(0o600), st.Mode().Perm(), f)
	}
	require.NoError(t, filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && strings.HasSuffix(p, ".pin") {
			t.Errorf("a PIN file inside the token directory: %s", p)
		}
		return err
	}))
	pin, err := os.ReadFile(userPIN)
	require.NoError(t, err)
	assert.GreaterOrEqual(t, len(strings.TrimSpace(string(pin))), 16, "a random pin")
	assert.NotContains(t, out, strings.TrimSpace(string(pin)), "the pin is never printed")
	so, err := os.ReadFile(soPIN)
	require.NoError(t, err)
	assert.NotEqual(t, string(pin), string(so))

	before := snapshot(t, dir)
	out = runSetup(t, config, "--dir", dir, "--label", "setup-test")
	assert.Contains(t, out, "exists")
	assert.Equal(t, before, snapshot(t, dir), "a second run changes nothing")

	runSetup(t, config, "--dir", dir, "--label", "setup-test", "--reset")
	pin2, err := os.ReadFile(userPIN)
	require.NoError(t, err)
	assert.NotEqual(t, string(pin), string(pin2), "--reset starts over with new pins")

	// --pin-dir inside the token directory is refused.
	cmd := exec.Command("bash", "softhsm-setup.sh", "--dir", dir, "--pin-dir", filepath.Join(dir, "pins"))
	cmd.Env = append(os.Environ(), "SOFTHSM2_CONF=", "XDG_CONFIG_HOME="+config)
	b, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee, "%s", b)
	assert.Equal(t, 2, ee.ExitCode())
}

func TestSoftHSMSetupRejectsUnknownFlags(t *testing.T) {
	cmd := exec.Command("bash", "softhsm-setup.sh", "--bogus")
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee)
	assert.Equal(t, 2, ee.ExitCode())
	assert.Contains(t, string(out), "unknown argument")
}
