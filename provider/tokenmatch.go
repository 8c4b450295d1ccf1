package provider

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/hsmkeys/hsmkeys/provider/internal/p11"
	"github.com/hsmkeys/hsmkeys/provider/internal/pkcs11uri"
)

// tokenMatch holds the attributes of a Config's URI that have no Config
// field of their own. RFC 7512 §3.3: a URI matches a token only when every
// attribute it names matches; an attribute left out matches anything.
type tokenMatch struct {
	model, manufacturer               string // CK_TOKEN_INFO
	slotDescription, slotManufacturer string // CK_SLOT_INFO
	// CK_INFO, from C_GetInfo (PKCS#11 v2.40 §5.4)
	libManufacturer, libDescription, libVersion string
}

// wants describes the token attributes asked for, for error messages.
func (m tokenMatch) wants() []string {
	var out []string
	add := func(name, v string) {
		if v != "" {
			out = append(out, fmt.Sprintf("%s %q", name, v))
		}
	}
	add("model", m.model)
	add("manufacturer", m.manufacturer)
	add("slot-description", m.slotDescription)
	add("slot-manufacturer", m.slotManufacturer)
	return out
}

func (m tokenMatch) token(t TokenInfo) bool {
	eq := func(want, got string) bool { return want == "" || want == got }
	return eq(m.model, t.Model) && eq(m.manufacturer, t.Manufacturer) &&
		eq(m.slotDescription, t.SlotDescription) && eq(m.slotManufacturer, t.SlotManufacturer)
}

func (m tokenMatch) hasLibrary() bool {
	return m.libManufacturer != "" || m.libDescription != "" || m.libVersion != ""
}

// library compares the library-* attributes with the module's C_GetInfo.
// It returns "" when they match, else what differs. A library-version of
// "M" is "M.0", as p11-kit reads it (p11-kit/uri.c).
func (m tokenMatch) library(mod *p11.Module) (string, error) {
	if !m.hasLibrary() {
		return "", nil
	}
	in, err := mod.Info()
	if err != nil {
		return "", mapErr(err)
	}
	var diff []string
	if m.libManufacturer != "" && m.libManufacturer != in.Manufacturer {
		diff = append(diff, fmt.Sprintf("library-manufacturer %q (the module is %q)", m.libManufacturer, in.Manufacturer))
	}
	if m.libDescription != "" && m.libDescription != in.Description {
		diff = append(diff, fmt.Sprintf("library-description %q (the module is %q)", m.libDescription, in.Description))
	}
	if m.libVersion != "" {
		major, minor, _ := strings.Cut(m.libVersion, ".")
		if minor == "" {
			minor = "0"
		}
		// Parse checked both are decimal; a value that overflows never matches.
		a, errA := strconv.ParseUint(major, 10, 8)
		b, errB := strconv.ParseUint(minor, 10, 8)
		if errA != nil || errB != nil || byte(a) != in.Major || byte(b) != in.Minor {
			diff = append(diff, fmt.Sprintf("library-version %s (the module is %d.%d)", m.libVersion, in.Major, in.Minor))
		}
	}
	return strings.Join(diff, " and "), nil
}

// URI is the token's RFC 7512 URI: its token, serial, model and
// manufacturer, the attributes p11tool and p11-kit print for a token. It
// names no module; add module-path to use it elsewhere. An uninitialised
// token has no URI ("").
func (t TokenInfo) URI() string {
	if !t.Initialized {
		return ""
	}
	return pkcs11uri.URI{Token: t.Label, Serial: t.Serial, Model: t.Model, Manufacturer: t.Manufacturer}.String()
}
