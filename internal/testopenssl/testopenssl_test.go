package testopenssl

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fakeOpenSSL writes a script standing in for a broken openssl: no real
// one can be made to fail this way on purpose.
func fakeOpenSSL(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "openssl")
	require.NoError(t, os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o755))
	return p
}

func TestCheckRefusesUnusable(t *testing.T) {
	_, err := check(fakeOpenSSL(t, "exit 1"))
	require.ErrorContains(t, err, "version")
	// Runs, but its cms cannot decrypt even a message without authAttrs.
	_, err = check(fakeOpenSSL(t, `[ "$1" = version ] && echo "OpenSSL 3.9.9 fake" && exit 0; exit 1`))
	require.ErrorContains(t, err, "cannot decrypt a plain AuthEnvelopedData")
	_, err = check(filepath.Join(t.TempDir(), "none"))
	require.Error(t, err)
}

// TestCheckFindsTheFix: the probe finds the fix in every listed OpenSSL
// 3.0 from 3.0.22 on (openssl#31695). Older ones normally lack it; a
// distribution's backport is logged, not failed.
func TestCheckFindsTheFix(t *testing.T) {
	for _, o := range All(t) {
		var minor, patch int
		if _, err := fmt.Sscanf(o.Name(), "3.%d.%d", &minor, &patch); err != nil || minor != 0 {
			t.Logf("%s: authAttrs %v (not a 3.0 release; nothing to compare)", o.Version, o.AuthAttrs)
			continue
		}
		if patch >= 22 {
			require.True(t, o.AuthAttrs, "%s (%s) has the fix, the probe must find it", o.Version, o.Path)
		} else if o.AuthAttrs {
			t.Logf("%s reads authAttrs: a backport of openssl#31695", o.Version)
		}
		t.Logf("%s (%s): authAttrs %v", o.Version, o.Path, o.AuthAttrs)
	}
}

// unfixedOpenSSL stands in for an OpenSSL without the authAttrs fix: it
// opens the plain probe and refuses the other, as 3.0.19 does. A fake,
// because a test cannot choose which real openssl the machine has.
func unfixedOpenSSL(t *testing.T) string {
	return fakeOpenSSL(t, `case "$1" in
version) echo "OpenSSL 3.0.19 fake (Library: OpenSSL 3.0.19 fake)" ;;
cms) grep -q '^MIHDBgsq' && printf 'hsmkeys openssl probe: plain\n' ;;
*) exit 1 ;;
esac`)
}

// TestCIFailsWithoutFix: under CI, a list with no openssl that reads
// authAttrs fails the tests instead of leaving the context cases unrun;
// without CI the same list passes, with the cases logged as not run.
func TestCIFailsWithoutFix(t *testing.T) {
	if os.Getenv("TESTOPENSSL_CHILD") != "" {
		o := First(t)
		require.False(t, o.AuthAttrs)
		require.False(t, o.CanAuthAttrs(t, "a case with a context"))
		return
	}
	fake := unfixedOpenSSL(t)
	for _, ci := range []string{"", "true"} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCIFailsWithoutFix$", "-test.v", "-test.count=1")
		cmd.Env = append(os.Environ(), "TESTOPENSSL_CHILD=1", Env+"="+fake, "CI="+ci)
		out, err := cmd.CombinedOutput()
		if ci == "" {
			require.NoError(t, err, "%s", out)
			assert.Contains(t, string(out), "a case with a context: not run with OpenSSL 3.0.19 fake")
		} else {
			require.Error(t, err, "%s", out)
			assert.Contains(t, string(out), "CI is set and no openssl in "+Env)
		}
	}
}
