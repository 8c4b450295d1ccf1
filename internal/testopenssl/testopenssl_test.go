package testopenssl

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

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
