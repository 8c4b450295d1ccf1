package envelope

import (
	"net/url"
	"testing"

	"github.com/hsmkeys/hsmkeys/provider"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestFromURL(t *testing.T) {
	for _, tc := range []struct {
		url  string
		want Settings
		err  error
	}{
		{url: "hsmkeys://app-kek", want: Settings{KEK: "app-kek"}},
		{url: "hsmkeys:///app-kek", want: Settings{KEK: "app-kek"}},
		{url: "hsmkeys://team/app-kek", want: Settings{KEK: "team/app-kek"}},
		{url: "hsmkeys://app-kek?module=/usr/lib/x.so&token=ci&pin_file=/run/pin",
			want: Settings{KEK: "app-kek", Module: "/usr/lib/x.so", Token: "ci", PINFile: "/run/pin"}},
		{url: "hsmkeys://k?uri=" + url.QueryEscape("pkcs11:token=ci?pin-source=file:/run/pin"),
			want: Settings{KEK: "k", URI: "pkcs11:token=ci?pin-source=file:/run/pin"}},
		{url: "hsmkeys://k?pin=1234", err: provider.ErrConfig},
		{url: "hsmkeys://k?PIN-VALUE=1234", err: provider.ErrConfig},
		{url: "hsmkeys://k?pin_value=1234", err: provider.ErrConfig},
		{url: "hsmkeys://user:1234@k", err: provider.ErrConfig},
		{url: "hsmkeys://k?modul=/x.so", err: provider.ErrConfig},
		{url: "hsmkeys://k?token=a&token=b", err: provider.ErrConfig},
		{url: "hsmkeys://", err: provider.ErrConfig},
	} {
		t.Run(tc.url, func(t *testing.T) {
			u, err := url.Parse(tc.url)
			require.NoError(t, err)
			got, err := FromURL(u)
			if tc.err != nil {
				require.ErrorIs(t, err, tc.err)
				assert.NotContains(t, err.Error(), "1234", "the pin is in the error")
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}

func TestFromMap(t *testing.T) {
	s, err := FromMap(map[string]string{"kek": "k", "token": "ci", "pin_file": "/run/pin", "disabled": "false"})
	require.NoError(t, err)
	assert.Equal(t, Settings{KEK: "k", Token: "ci", PINFile: "/run/pin"}, s)
	_, err = FromMap(map[string]string{"kek": "k", "pin": "1234"})
	require.ErrorIs(t, err, provider.ErrConfig)
	assert.NotContains(t, err.Error(), "1234")
}

func TestConfigPrecedence(t *testing.T) {
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	full := map[string]string{
		"HSMKEYS_MODULE": "/env/mod.so", "HSMKEYS_TOKEN": "envtok", "HSMKEYS_PIN_FILE": "/env/pin",
	}
	for _, tc := range []struct {
		name   string
		s      Settings
		env    map[string]string
		module string
		token  string
		uri    string
		pin    string // String of the PIN source; "" for the uri's
		err    error
	}{
		{name: "environment", env: full, module: "/env/mod.so", token: "envtok", pin: "pin(file /env/pin)"},
		{name: "fields beat the environment", s: Settings{Module: "/m.so", Token: "t", PINFile: "/p"}, env: full,
			module: "/m.so", token: "t", pin: "pin(file /p)"},
		{name: "HSMKEYS_PIN before HSMKEYS_PIN_FILE", env: map[string]string{"HSMKEYS_MODULE": "/m.so", "HSMKEYS_PIN": "x", "HSMKEYS_PIN_FILE": "/f"},
			module: "/m.so", pin: "pin(env HSMKEYS_PIN)"},
		{name: "HSMKEYS_URI", env: map[string]string{"HSMKEYS_URI": "pkcs11:token=u?module-path=/u.so&pin-source=file:/u", "HSMKEYS_TOKEN": "ignored"},
			uri: "pkcs11:token=u?module-path=/u.so&pin-source=file:/u"},
		{name: "a token field sets HSMKEYS_URI aside", s: Settings{Token: "t"},
			env:    map[string]string{"HSMKEYS_URI": "pkcs11:token=u", "HSMKEYS_MODULE": "/m.so", "HSMKEYS_PIN_FILE": "/f"},
			module: "/m.so", token: "t", pin: "pin(file /f)"},
		{name: "pin-value in the uri", s: Settings{URI: "pkcs11:token=t?module-path=/m.so&pin-value=1234"}, err: provider.ErrConfig},
		{name: "pin twice", s: Settings{Module: "/m.so", URI: "pkcs11:token=t?pin-source=file:/a", PINFile: "/b"}, err: provider.ErrConfig},
		{name: "no pin", s: Settings{Module: "/m.so"}, err: provider.ErrPINSource},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := tc.s.Config(env(tc.env))
			if tc.err != nil {
				require.ErrorIs(t, err, tc.err)
				assert.NotContains(t, err.Error(), "1234")
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.module, cfg.Module)
			assert.Equal(t, tc.token, cfg.TokenLabel)
			assert.Equal(t, tc.uri, cfg.URI)
			if tc.pin == "" {
				assert.Nil(t, cfg.PIN)
			} else {
				require.NotNil(t, cfg.PIN)
				assert.Equal(t, tc.pin, cfg.PIN.(interface{ String() string }).String())
			}
		})
	}
}
