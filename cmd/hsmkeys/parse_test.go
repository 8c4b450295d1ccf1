package main

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseContextPair(t *testing.T) {
	for _, tc := range []struct {
		in, key, value, err string
	}{
		{in: "app=billing", key: "app", value: "billing"},
		{in: "k=", key: "k", value: ""},
		{in: "url=https://x/?a=b", key: "url", value: "https://x/?a=b"},
		{in: "ünï=cödé", key: "ünï", value: "cödé"},
		{in: "k v=x y", key: "k v", value: "x y"},
		{in: "novalue", err: "want key=value"},
		{in: "=v", err: "empty key"},
		{in: "", err: "want key=value"},
		{in: "a=b\nc", err: "control character"},
		{in: "a\x00=b", err: "control character"},
		{in: "a=\xff", err: "not UTF-8"},
		{in: "k=" + strings.Repeat("v", maxContextLen+1), err: "longer than"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			k, v, err := parseContextPair(tc.in)
			if tc.err != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.key, k)
			assert.Equal(t, tc.value, v)
		})
	}
}

func TestContextFlagRefusesDuplicates(t *testing.T) {
	m := contextFlag{}
	require.NoError(t, m.Set("a=1"))
	require.NoError(t, m.Set("b=2"))
	err := m.Set("a=3")
	require.ErrorContains(t, err, `context key "a" given twice`)
	assert.Equal(t, map[string]string{"a": "1", "b": "2"}, map[string]string(m))
	for i := len(m); i < maxContextPairs; i++ {
		require.NoError(t, m.Set(strings.Repeat("k", i+1)+"=v"))
	}
	require.ErrorContains(t, m.Set("one=more"), "more than")
}

// FuzzParseContextPair: never a panic; a pair it accepts is the input split
// at its first '=', with a non-empty, printable UTF-8 key.
func FuzzParseContextPair(f *testing.F) {
	for _, s := range []string{"a=b", "=", "a==b", "k=", "ü=ö", "a=b=c", "\x00=\x01", "a=\xff"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		k, v, err := parseContextPair(s)
		if err != nil {
			return
		}
		if k+"="+v != s || strings.Contains(k, "=") || k == "" {
			t.Fatalf("%q parsed as %q, %q", s, k, v)
		}
		if !utf8.ValidString(k) || !utf8.ValidString(v) || printable(k) != nil || printable(v) != nil {
			t.Fatalf("%q accepted with unprintable parts", s)
		}
	})
}

func TestURIAttrs(t *testing.T) {
	a := uriAttrs("pkcs11:token=hsm%20keys;serial=01?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/pin")
	assert.Equal(t, "hsm keys", a["token"])
	assert.Equal(t, "01", a["serial"])
	assert.Equal(t, "/usr/lib/softhsm/libsofthsm2.so", a["module-path"])
	assert.Equal(t, "file:/run/pin", a["pin-source"])
	assert.Empty(t, uriAttrs("https://example.com/?pin-value=1"))
	assert.Contains(t, uriAttrs("PKCS11:token=a"), "token")
}

func TestRefusePINInURI(t *testing.T) {
	for _, uri := range []string{
		"pkcs11:token=a?pin-value=1234",
		"pkcs11:token=a?module-path=/m.so&pin-value=1234",
		"pkcs11:token=a?PIN-VALUE=1234",
		"pkcs11:token=a?pin%2Dvalue=1234",
		"pkcs11:token=a;pin-value=1234",
		"pkcs11:?pin-value",
	} {
		err := refusePINInURI(uri)
		require.Error(t, err, uri)
		assert.NotContains(t, err.Error(), "1234", "the PIN is not repeated")
		var ue *usageError
		require.ErrorAs(t, err, &ue)
		assert.Contains(t, ue.hint, "pin-source=file:")
	}
	for _, uri := range []string{
		"pkcs11:token=a?module-path=/m.so&pin-source=file:/run/pin",
		"pkcs11:token=pin-value",
		"",
	} {
		assert.NoError(t, refusePINInURI(uri), uri)
	}
}

// FuzzURIAttrs: the scan never panics, and a pin-value query attribute
// appended to any URI is refused.
func FuzzURIAttrs(f *testing.F) {
	for _, s := range []string{
		"pkcs11:token=a", "pkcs11:", "pkcs11:?", "pkcs11:;;?&&", "pkcs11:a=%zz?b=%",
		"pkcs11:token=a?module-path=/m.so&pin-source=file:/p", "PKCS11:x=y?pin-value=1",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		_ = uriAttrs(s)
		if !strings.HasPrefix(strings.ToLower(s), "pkcs11:") {
			return
		}
		sep := "&"
		if !strings.Contains(s, "?") {
			sep = "?"
		}
		if refusePINInURI(s+sep+"pin-value=1") == nil {
			t.Fatalf("%q with a pin-value was accepted", s)
		}
	})
}

func TestParseInterleaved(t *testing.T) {
	c := &cli{}
	fs := c.newFlags(spec{path: "t"})
	var keks listFlag
	fs.Var(&keks, "kek", "")
	verify := fs.Bool("verify", false, "")
	ops, err := c.parse(fs, []string{"a", "--kek", "x", "b", "--verify", "--kek=y", "--", "--kek", "-c"})
	require.NoError(t, err)
	assert.Equal(t, []string{"a", "b", "--kek", "-c"}, ops)
	assert.Equal(t, listFlag{"x", "y"}, keks)
	assert.True(t, *verify)

	_, err = c.parse(fs, []string{"--nope"})
	var ue *usageError
	require.ErrorAs(t, err, &ue)
	assert.Contains(t, ue.hint, "hsmkeys t --help")

	ops, err = c.parse(c.newFlags(spec{path: "t"}), []string{"-"})
	require.NoError(t, err)
	assert.Equal(t, []string{"-"}, ops)
}

func TestExitCodes(t *testing.T) {
	var out, errOut strings.Builder
	assert.Equal(t, exitUsage, run([]string{"nosuch"}, strings.NewReader(""), &out, &errOut))
	assert.Equal(t, exitOK, run([]string{"--help"}, strings.NewReader(""), &out, &errOut))
	assert.Equal(t, exitUsage, run([]string{"--uri", "pkcs11:?pin-value=1", "tokens"}, strings.NewReader(""), &out, &errOut))
	assert.Equal(t, exitFail, run([]string{"key", "inspect", "/nonexistent/file"}, strings.NewReader(""), &out, &errOut))
	assert.Contains(t, errOut.String(), "hsmkeys: error: open /nonexistent/file: no such file or directory")
}
