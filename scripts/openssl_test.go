package scripts

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/hsmkeys/hsmkeys/internal/testopenssl"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func opensslVersions(args ...string) *exec.Cmd {
	return exec.Command("bash", append([]string{"openssl-versions.sh"}, args...)...)
}

// TestOpenSSLVersionsProbe: the script's probe and the tests' agree on the
// system's openssl.
func TestOpenSSLVersionsProbe(t *testing.T) {
	sys, err := exec.LookPath("openssl")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI is set and openssl is missing: %v", err)
		}
		t.Skip("openssl not installed")
	}
	o, err := testopenssl.Check(sys)
	require.NoError(t, err)
	err = opensslVersions("--probe", sys).Run()
	assert.Equal(t, o.AuthAttrs, err == nil, "%s: script probe %v, test probe %v", o.Version, err, o.AuthAttrs)
}

// TestOpenSSLVersionsFixed: --fixed gives an openssl that reads authAttrs,
// the system's or a Debian build beside it (fetched once into the cache,
// ~/.cache/hsmkeys/openssl, which scripts/test.sh has filled already).
func TestOpenSSLVersionsFixed(t *testing.T) {
	out, err := opensslVersions("--fixed").Output()
	if err != nil {
		msg := err.Error()
		if ee, ok := err.(*exec.ExitError); ok {
			msg += ": " + string(ee.Stderr)
		}
		if os.Getenv("CI") != "" {
			t.Fatalf("CI is set and no fixed openssl: %s", msg)
		}
		t.Skipf("no fixed openssl (apt cannot fetch one here?): %s", msg)
	}
	path := strings.TrimSpace(string(out))
	o, err := testopenssl.Check(path)
	require.NoError(t, err)
	assert.True(t, o.AuthAttrs, "%s (%s)", o.Version, path)
	t.Logf("fixed: %s (%s)", o.Version, path)
}

func TestOpenSSLVersionsUsage(t *testing.T) {
	for _, args := range [][]string{nil, {"--probe"}, {"--all", "x"}} {
		err := opensslVersions(args...).Run()
		var ee *exec.ExitError
		require.ErrorAs(t, err, &ee, "%v", args)
		assert.Equal(t, 2, ee.ExitCode(), "%v", args)
	}
}
