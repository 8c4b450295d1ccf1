package envelope

import (
	"fmt"
	"net/url"
	"strings"

	"github.com/hsmkeys/hsmkeys/provider"
)

// Settings name a token and a KEK. Empty fields are taken from the
// environment the hsmkeys command reads (see Config).
type Settings struct {
	KEK     string // the KEK's name (CKA_LABEL); the newest version seals
	Module  string // PKCS#11 library
	Token   string // token label
	URI     string // RFC 7512 PKCS#11 URI (token, serial, slot-id, module-path, pin-source)
	PINFile string // file whose first line is the user PIN
}

// pinKeys are parameter names that would carry a PIN. They are refused: a
// URL or a config map ends up in logs, process lists and config files.
var pinKeys = []string{"pin", "pin_value", "pin-value", "pinvalue"}

func refusePIN(key string) error {
	for _, k := range pinKeys {
		if strings.EqualFold(key, k) {
			return fmt.Errorf("%w: %q: a pin never goes in a url or a config map; use pin_file, HSMKEYS_PIN_FILE or HSMKEYS_PIN", provider.ErrConfig, key)
		}
	}
	return nil
}

// FromURL reads hsmkeys://KEKNAME?module=...&token=...&uri=...&pin_file=...
// (the KEK name may also be the path: hsmkeys:///KEKNAME). Any other query
// parameter is an error, and so is a PIN in it.
func FromURL(u *url.URL) (Settings, error) {
	var s Settings
	if u.User != nil {
		return s, fmt.Errorf("%w: user information in a kek url (a pin never goes in a url)", provider.ErrConfig)
	}
	s.KEK = u.Host
	if u.Path != "" {
		if s.KEK == "" {
			s.KEK = strings.TrimPrefix(u.Path, "/")
		} else {
			s.KEK += u.Path
		}
	}
	for k, vs := range u.Query() {
		if err := refusePIN(k); err != nil {
			return s, err
		}
		if len(vs) != 1 {
			return s, fmt.Errorf("%w: query parameter %q given %d times", provider.ErrConfig, k, len(vs))
		}
		if !s.set(k, vs[0]) {
			return s, fmt.Errorf("%w: unknown query parameter %q (want module, token, uri or pin_file)", provider.ErrConfig, k)
		}
	}
	if s.KEK == "" {
		return s, fmt.Errorf("%w: the url names no kek (want hsmkeys://KEKNAME)", provider.ErrConfig)
	}
	return s, nil
}

// FromMap reads the keys kek, module, token, uri and pin_file of a config
// map (the other keys are the host's and are left alone); a key that would
// carry a PIN is an error.
func FromMap(m map[string]string) (Settings, error) {
	var s Settings
	for k, v := range m {
		if err := refusePIN(k); err != nil {
			return s, err
		}
		if k == "kek" {
			s.KEK = v
			continue
		}
		s.set(k, v)
	}
	return s, nil
}

// set sets the field named k, and reports whether there is one.
func (s *Settings) set(k, v string) bool {
	switch k {
	case "module":
		s.Module = v
	case "token":
		s.Token = v
	case "uri":
		s.URI = v
	case "pin_file":
		s.PINFile = v
	default:
		return false
	}
	return true
}

// Config is the provider configuration of s, filled in as the hsmkeys
// command fills in its flags: a field beats the URI, which beats a
// variable (HSMKEYS_URI, HSMKEYS_MODULE, HSMKEYS_TOKEN), which beats the
// default (SoftHSM, where installed); an explicit module or token
// leaves HSMKEYS_URI aside. The PIN comes from PINFile, the URI's
// pin-source, HSMKEYS_PIN, then the file HSMKEYS_PIN_FILE names. getenv is
// os.Getenv, or nil to read no environment.
func (s Settings) Config(getenv func(string) string) (provider.Config, error) {
	if getenv == nil {
		getenv = func(string) string { return "" }
	}
	var cfg provider.Config
	uri := s.URI
	if uri == "" && s.Module == "" && s.Token == "" {
		uri = getenv("HSMKEYS_URI")
	}
	attrs := uriAttrs(uri)
	if _, ok := attrs["pin-value"]; ok {
		return cfg, fmt.Errorf("%w: the pkcs11 uri holds a pin-value; use pin-source=file:/path or pin_file", provider.ErrConfig)
	}
	cfg.URI = uri
	switch {
	case s.Module != "":
		cfg.Module = s.Module
	case attrs["module-path"] != "", attrs["module-name"] != "":
		// the provider resolves them (module-name as p11-kit does)
	case getenv("HSMKEYS_MODULE") != "":
		cfg.Module = getenv("HSMKEYS_MODULE")
	default:
		// p11-kit's proxy, never SoftHSM by itself (provider.DefaultModule)
		m, err := provider.DefaultModule()
		if err != nil {
			return cfg, fmt.Errorf("%w (set module, HSMKEYS_MODULE, or module-path or module-name in the uri)", err)
		}
		cfg.Module = m
	}
	_, uriToken := attrs["token"]
	_, uriSerial := attrs["serial"]
	_, uriSlot := attrs["slot-id"]
	switch {
	case s.Token != "":
		cfg.TokenLabel = s.Token
	case uriToken || uriSerial || uriSlot:
	default:
		cfg.TokenLabel = getenv("HSMKEYS_TOKEN")
	}
	_, uriPIN := attrs["pin-source"]
	switch {
	case s.PINFile != "" && uriPIN:
		return cfg, fmt.Errorf("%w: the pin is given twice: by pin_file and by the uri's pin-source", provider.ErrConfig)
	case s.PINFile != "":
		cfg.PIN = provider.PINFile(s.PINFile)
	case uriPIN:
	case getenv("HSMKEYS_PIN") != "":
		cfg.PIN = provider.PINEnv("HSMKEYS_PIN")
	case getenv("HSMKEYS_PIN_FILE") != "":
		cfg.PIN = provider.PINFile(getenv("HSMKEYS_PIN_FILE"))
	default:
		return cfg, fmt.Errorf("%w: no user pin: set pin_file, HSMKEYS_PIN_FILE or HSMKEYS_PIN", provider.ErrPINSource)
	}
	return cfg, nil
}

// uriAttrs scans the attribute names and values of an RFC 7512 URI, path
// and query alike, names lowercased: only to see which ones it sets (the
// provider parses it for real).
func uriAttrs(uri string) map[string]string {
	attrs := map[string]string{}
	if len(uri) < 7 || !strings.EqualFold(uri[:7], "pkcs11:") {
		return attrs
	}
	path, query, _ := strings.Cut(uri[7:], "?")
	for _, part := range [][]string{strings.Split(path, ";"), strings.Split(query, "&")} {
		for _, kv := range part {
			if kv == "" {
				continue
			}
			k, v, _ := strings.Cut(kv, "=")
			if dk, err := url.PathUnescape(k); err == nil {
				k = dk
			}
			if dv, err := url.PathUnescape(v); err == nil {
				v = dv
			}
			attrs[strings.ToLower(strings.TrimSpace(k))] = v
		}
	}
	return attrs
}
