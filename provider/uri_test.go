package provider

// RFC 7512 URIs: every attribute a URI names must match the token (and the
// module's C_GetInfo) or the token is not selected; module-name resolves as
// p11-kit does; with no module named, p11-kit's proxy or a clear error; a
// KEK named by an object URI.

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// testTokenInfo is the test token as the module lists it.
func testTokenInfo(t *testing.T) TokenInfo {
	t.Helper()
	ts, err := Tokens(tok.module)
	require.NoError(t, err)
	for _, x := range ts {
		if x.Label == tok.label {
			return x
		}
	}
	t.Fatalf("test token %q not listed", tok.label)
	return TokenInfo{}
}

func esc(s string) string { return url.PathEscape(s) }

func TestURISelectsOnlyOnEveryAttribute(t *testing.T) {
	needToken(t)
	ti := testTokenInfo(t)
	require.Equal(t, "SoftHSM v2", ti.Model)
	require.NotEmpty(t, ti.SlotDescription, "C_GetSlotInfo text is read")
	lbl := "token=" + esc(tok.label)
	for _, c := range []struct {
		uri  string
		want string // "" selects the token; else a part of the not-found error
	}{
		{"pkcs11:" + lbl + ";model=SoftHSM%20v2;manufacturer=SoftHSM%20project", ""},
		{"pkcs11:" + lbl + ";serial=" + ti.Serial + ";model=SoftHSM%20v2", ""},
		{"pkcs11:" + lbl + ";slot-description=" + esc(ti.SlotDescription) + ";slot-manufacturer=" + esc(ti.SlotManufacturer), ""},
		{"pkcs11:" + lbl + ";library-manufacturer=SoftHSM;library-description=Implementation%20of%20PKCS11;library-version=2.6", ""},
		{ti.URI(), ""}, // the token's own URI selects it
		// Issue 13: this selected the SoftHSM token.
		{"pkcs11:model=Luna;manufacturer=Thales;" + lbl, `model "Luna" and manufacturer "Thales"`},
		{"pkcs11:" + lbl + ";model=Luna", `token label "` + tok.label + `" and model "Luna" not found`},
		{"pkcs11:" + lbl + ";manufacturer=SoftHSM", `manufacturer "SoftHSM"`},
		{"pkcs11:" + lbl + ";slot-description=elsewhere", `slot-description "elsewhere"`},
		{"pkcs11:" + lbl + ";slot-manufacturer=Thales", `slot-manufacturer "Thales"`},
		{"pkcs11:" + lbl + ";library-manufacturer=Thales", `library-manufacturer "Thales" (the module is "SoftHSM")`},
		{"pkcs11:" + lbl + ";library-description=Luna", `library-description "Luna"`},
		{"pkcs11:" + lbl + ";library-version=2", `library-version 2 (the module is 2.6)`}, // "2" is 2.0, as p11-kit reads it
		{"pkcs11:" + lbl + ";library-version=2.60", `library-version 2.60`},
		{"pkcs11:" + lbl + ";library-version=99999999999999999999", `library-version`},
	} {
		t.Run(c.uri, func(t *testing.T) {
			cfg := baseConfig()
			cfg.TokenLabel = ""
			cfg.URI = c.uri
			a, err := OpenAdmin(bg, cfg, nil)
			if c.want == "" {
				require.NoError(t, err)
				require.Equal(t, tok.serial, a.Token().Serial)
				require.NoError(t, a.Close())
				return
			}
			require.ErrorIs(t, err, ErrNotFound)
			var tnf *TokenNotFoundError
			require.ErrorAs(t, err, &tnf)
			require.Contains(t, err.Error(), c.want)
			require.Contains(t, err.Error(), "tokens present: "+ti.String(), "the error lists the tokens there are")
		})
	}

	// Open, as applications do, refuses a wrong model the same way.
	cfg := baseConfig()
	cfg.URI = "pkcs11:" + lbl + ";model=Luna"
	_, err := Open(bg, cfg)
	require.ErrorIs(t, err, ErrNotFound)
	require.ErrorContains(t, err, `model "Luna"`)
	cfg.URI = "pkcs11:" + lbl + ";model=SoftHSM%20v2;manufacturer=SoftHSM%20project"
	p, err := Open(bg, cfg)
	require.NoError(t, err)
	require.Equal(t, tok.serial, p.Token().Serial)
	require.NoError(t, p.Close())
}

func TestTokenURIRoundTrip(t *testing.T) {
	needToken(t)
	ti := testTokenInfo(t)
	u := ti.URI()
	require.Equal(t, "pkcs11:manufacturer=SoftHSM%20project;model=SoftHSM%20v2;serial="+ti.Serial+";token="+esc(tok.label), u)
	ts, err := TokensOf(bg, Config{URI: u + "?module-path=" + tok.module})
	require.NoError(t, err)
	sel, err := selectToken(Config{URI: u}.mustResolveMatch(t), nil, ts)
	require.NoError(t, err)
	require.Equal(t, ti, sel)
	require.Empty(t, TokenInfo{Label: "x"}.URI(), "an uninitialised token has no URI")
}

// mustResolveMatch is resolveURI for a URI without library attributes.
func (c Config) mustResolveMatch(t *testing.T) Config {
	t.Helper()
	c, err := c.resolveURI()
	require.NoError(t, err)
	return c
}

// withModuleDirs points p11-kit's directories at the test's own.
func withModuleDirs(t *testing.T, config []string, modules []string, proxy []string) {
	t.Helper()
	oc, om, op := p11kitConfigDirs, p11kitModuleDirs, p11kitProxyPaths
	p11kitConfigDirs, p11kitModuleDirs, p11kitProxyPaths = config, modules, proxy
	t.Cleanup(func() { p11kitConfigDirs, p11kitModuleDirs, p11kitProxyPaths = oc, om, op })
}

func TestFindModule(t *testing.T) {
	t.Run("system", func(t *testing.T) {
		needToken(t)
		needStack(t, "p11-kit's registration of SoftHSM (package softhsm2)", "/usr/share/p11-kit/modules/softhsm2.module")
		needStack(t, "p11-kit-proxy (package p11-kit-modules)", p11kitProxy)
		p, err := FindModule("softhsm2") // registered with p11-kit by that name
		require.NoError(t, err)
		require.True(t, sameFile(p, tok.module), "%s is SoftHSM", p)
		p, err = FindModule("p11-kit-proxy") // a library in the system directory
		require.NoError(t, err)
		require.Equal(t, p11kitProxy, p)

		// A URI naming the module by name opens the token.
		cfg := baseConfig()
		cfg.Module = ""
		cfg.URI = "pkcs11:token=" + esc(tok.label) + "?module-name=softhsm2"
		pr, err := Open(bg, cfg)
		require.NoError(t, err)
		require.Equal(t, tok.serial, pr.Token().Serial)
		require.NoError(t, pr.Close())
		// Agreeing with Module is fine; disagreeing is an error.
		cfg.Module = tok.module
		_, err = cfg.resolve()
		require.NoError(t, err)
		cfg.Module = p11kitProxy
		_, err = cfg.resolve()
		require.ErrorIs(t, err, ErrConfig)
		require.ErrorContains(t, err, `uri module-name "softhsm2" is `)
		cfg.Module = ""
		cfg.URI = "pkcs11:?module-name=softhsm2&module-path=" + p11kitProxy
		_, err = cfg.resolve()
		require.ErrorContains(t, err, "not its module-path")
	})
	t.Run("dirs", func(t *testing.T) {
		etc, share, mods, lib := t.TempDir(), t.TempDir(), t.TempDir(), t.TempDir()
		withModuleDirs(t, []string{etc, share}, []string{mods}, nil)
		old := systemLibDirs
		systemLibDirs = []string{lib}
		t.Cleanup(func() { systemLibDirs = old })
		write := func(path, s string) { require.NoError(t, os.WriteFile(path, []byte(s), 0o644)) }
		write(filepath.Join(mods, "vendor-pkcs11.so"), "")
		write(filepath.Join(lib, "libacme.so"), "")
		write(filepath.Join(share, "vendor.module"), "# comment\nmodule: vendor-pkcs11.so\npriority: 1\n")
		write(filepath.Join(share, "gone.module"), "module: /nonexistent/libgone.so\n")
		write(filepath.Join(share, "over.module"), "module: /nonexistent/share.so\n")
		write(filepath.Join(etc, "over.module"), "module: "+filepath.Join(lib, "libacme.so")+"\n")
		write(filepath.Join(share, "empty.module"), "# no module line\n")

		p, err := FindModule("vendor") // relative to p11-kit's module directory
		require.NoError(t, err)
		require.Equal(t, filepath.Join(mods, "vendor-pkcs11.so"), p)
		p, err = FindModule("over") // /etc overrides /usr/share
		require.NoError(t, err)
		require.Equal(t, filepath.Join(lib, "libacme.so"), p)
		p, err = FindModule("acme") // libNAME.so in a library directory
		require.NoError(t, err)
		require.Equal(t, filepath.Join(lib, "libacme.so"), p)
		p, err = FindModule("vendor-pkcs11") // NAME.so in p11-kit's module directory
		require.NoError(t, err)
		require.Equal(t, filepath.Join(mods, "vendor-pkcs11.so"), p)

		_, err = FindModule("gone")
		require.ErrorIs(t, err, ErrConfig)
		require.ErrorContains(t, err, "gone.module names /nonexistent/libgone.so, which does not exist")
		_, err = FindModule("nosuch")
		require.ErrorIs(t, err, ErrConfig)
		require.ErrorContains(t, err, `module-name "nosuch": no p11-kit module of that name in `+etc+" or "+share+", and no nosuch.so or libnosuch.so in "+mods+", "+lib)
		for _, bad := range []string{"", "../libacme", "/usr/lib/libacme.so", ".."} {
			_, err = FindModule(bad)
			require.ErrorIs(t, err, ErrConfig, bad)
		}

		names := []string{}
		for _, r := range RegisteredModules() {
			names = append(names, fmt.Sprintf("%s=%s %v", r.Name, r.Path, r.Present))
		}
		require.Equal(t, []string{
			"gone=/nonexistent/libgone.so false",
			"over=" + filepath.Join(lib, "libacme.so") + " true",
			"vendor=" + filepath.Join(mods, "vendor-pkcs11.so") + " true",
		}, names)
	})
}

func TestDefaultModule(t *testing.T) {
	t.Run("p11-kit proxy", func(t *testing.T) {
		needToken(t)
		needStack(t, "p11-kit-proxy (package p11-kit-modules)", p11kitProxy)
		needStack(t, "p11-kit's registration of SoftHSM (package softhsm2)", "/usr/share/p11-kit/modules/softhsm2.module")
		m, err := DefaultModule()
		require.NoError(t, err)
		require.Equal(t, p11kitProxy, m)
		// No module in the config: the proxy, which shows the tokens p11-kit
		// registers (SoftHSM's test token among them).
		cfg := baseConfig()
		cfg.Module = ""
		p, err := Open(bg, cfg)
		require.NoError(t, err)
		require.Equal(t, tok.serial, p.Token().Serial)
		require.NoError(t, p.Close())
		ts, err := TokensOf(bg, Config{})
		require.NoError(t, err)
		require.True(t, strings.Contains(fmt.Sprint(ts), tok.serial))
	})
	t.Run("no proxy", func(t *testing.T) {
		share := t.TempDir()
		withModuleDirs(t, []string{filepath.Join(share, "missing"), share}, []string{share}, []string{filepath.Join(share, "p11-kit-proxy.so")})
		require.NoError(t, os.WriteFile(filepath.Join(share, "softhsm2.module"), []byte("module: /usr/lib/softhsm/libsofthsm2.so\n"), 0o644))
		require.NoError(t, os.WriteFile(filepath.Join(share, "luna.module"), []byte("module: /opt/safenet/lunaclient/lib/libCryptoki2_64.so\n"), 0o644))
		_, err := DefaultModule()
		require.ErrorIs(t, err, ErrNoModule)
		require.ErrorIs(t, err, ErrConfig)
		var nm *NoModuleError
		require.ErrorAs(t, err, &nm)
		require.Len(t, nm.Registered, 2)
		msg := err.Error()
		assert.Contains(t, msg, "p11-kit's proxy (p11-kit-proxy.so) is not installed")
		assert.Contains(t, msg, "modules registered with p11-kit: luna (/opt/safenet/lunaclient/lib/libCryptoki2_64.so) missing, softhsm2 (/usr/lib/softhsm/libsofthsm2.so)")
		// Never SoftHSM by itself: Open says how to choose.
		_, err = Open(bg, Config{TokenLabel: "x", PIN: PINValue([]byte("x"))})
		require.ErrorIs(t, err, ErrNoModule)
		_, err = TokensOf(bg, Config{})
		require.ErrorIs(t, err, ErrNoModule)

		withModuleDirs(t, []string{filepath.Join(share, "missing")}, nil, nil)
		_, err = DefaultModule()
		require.ErrorContains(t, err, "no module is registered in "+filepath.Join(share, "missing"))
	})
}

func TestKEKByURI(t *testing.T) {
	a := openAdmin(t)
	name, rsaName := uniqueName(t, "uri-aes"), uniqueName(t, "uri-rsa")
	v1, err := a.CreateKEKWith(bg, name, KEKAES256, KEKOptions{AllowExposedAtRest: true})
	require.NoError(t, err)
	v2, err := a.CreateKEKWith(bg, name, KEKAES256, KEKOptions{AllowExposedAtRest: true})
	require.NoError(t, err)
	r, err := a.CreateKEK(bg, rsaName, KEKRSA2048)
	require.NoError(t, err)
	require.NoError(t, a.Close())
	p := openProvider(t)
	ti := p.Token()

	idURI := func(id []byte) string {
		var b strings.Builder
		for _, c := range id {
			fmt.Fprintf(&b, "%%%02X", c)
		}
		return b.String()
	}
	// Each KEK's printed URI names it, the older version too.
	for _, k := range []*KEK{v1, v2, r} {
		u := k.URI(ti)
		require.Contains(t, u, "object="+esc(k.Label)+";")
		got, err := p.KEK(bg, u)
		require.NoError(t, err, u)
		require.Equal(t, k.ID, got.ID, u)
	}
	require.Contains(t, v1.URI(ti), ";type=secret-key;id=")
	require.Contains(t, r.URI(ti), ";type=public;id=")

	for _, c := range []struct {
		uri    string
		id     []byte // the KEK found
		target error
		msg    string
	}{
		{"pkcs11:object=" + name + ";id=" + idURI(v1.ID), v1.ID, nil, ""},
		{"pkcs11:id=" + idURI(v2.ID), v2.ID, nil, ""},
		{"pkcs11:token=" + esc(tok.label) + ";object=" + name + ";type=secret-key;id=" + idURI(v2.ID), v2.ID, nil, ""},
		{"pkcs11:object=" + rsaName + ";type=private", r.ID, nil, ""},
		{"pkcs11:object=" + rsaName + ";type=public", r.ID, nil, ""},
		{"pkcs11:model=SoftHSM%20v2;object=" + rsaName, r.ID, nil, ""},
		{"pkcs11:object=" + name, nil, ErrAmbiguous, "2 keks match pkcs11:object=" + name + ": " + v1.URI(ti) + ", " + v2.URI(ti)},
		{"pkcs11:object=" + name + ";type=public", nil, ErrNotFound, "no kek matches"},
		{"pkcs11:object=" + rsaName + ";type=secret-key", nil, ErrNotFound, "no kek matches"},
		{"pkcs11:object=" + name + ";type=cert", nil, ErrNotFound, "no kek is of type cert"},
		{"pkcs11:object=nosuch", nil, ErrNotFound, "no kek matches pkcs11:object=nosuch"},
		{"pkcs11:object=" + name + ";id=%00%00%00%09", nil, ErrNotFound, "no kek matches"},
		{"pkcs11:token=other;object=" + name + ";id=" + idURI(v1.ID), nil, ErrNotFound, `it names another token: token "other" (this token's is "` + tok.label + `")`},
		{"pkcs11:model=Luna;id=" + idURI(v1.ID), nil, ErrNotFound, `model "Luna"`},
		{"pkcs11:library-manufacturer=Thales;id=" + idURI(v1.ID), nil, ErrNotFound, `library-manufacturer "Thales"`},
		{"pkcs11:token=" + esc(tok.label), nil, ErrInvalidInput, "names no object"},
		{"pkcs11:object=a;bogus=1", nil, ErrInvalidInput, "unknown attribute"},
	} {
		t.Run(c.uri, func(t *testing.T) {
			k, err := p.KEK(bg, c.uri)
			if c.target == nil {
				require.NoError(t, err)
				require.Equal(t, c.id, k.ID)
				return
			}
			require.ErrorIs(t, err, c.target)
			require.ErrorContains(t, err, c.msg)
			require.False(t, errors.Is(err, ErrAmbiguous) && c.target != ErrAmbiguous)
		})
	}

	// A KEK named by URI wraps like one named by label.
	k, err := p.Generate(bg, AES256)
	require.NoError(t, err)
	kek, err := p.KEK(bg, v1.URI(ti))
	require.NoError(t, err)
	wrapped, err := p.Wrap(bg, k, kek)
	require.NoError(t, err)
	require.NotNil(t, wrapped)
	require.NoError(t, k.Destroy(bg))
}

// A KEK name that reads as a URI is refused: Provider.KEK would never find it.
func TestKEKNameIsNotAURI(t *testing.T) {
	a := openAdmin(t)
	_, err := a.CreateKEK(bg, "PKCS11:object=x", KEKAES256)
	require.ErrorIs(t, err, ErrInvalidInput)
}
