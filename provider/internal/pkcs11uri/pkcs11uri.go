// Package pkcs11uri parses PKCS#11 URIs as specified by RFC 7512
// (https://www.rfc-editor.org/rfc/rfc7512).
//
// A PKCS#11 URI names a module, a slot, a token and an object on it:
//
//	pkcs11:token=ci;serial=0123abcd;object=kek?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/pin
//
// Parse is strict: it follows the ABNF of RFC 7512 §2.3 and rejects what it
// does not allow (unknown attributes, duplicates, characters that must be
// percent-encoded, bad percent-encoding) with a *ParseError that wraps
// ErrMalformed. Vendor attributes ("x-" names, §2.3) are checked for syntax
// and then ignored.
//
// A URI may carry a PIN in "pin-value". It never leaves a URI through
// String, fmt or a ParseError, so a URI is safe to log.
//
// URI values are plain data; they are safe for concurrent reads.
package pkcs11uri

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// MaxLength is the longest input Parse accepts, in bytes. RFC 7512 sets no
// limit; real URIs are a few hundred bytes.
const MaxLength = 8 << 10

const scheme = "pkcs11:"

// ErrMalformed is wrapped by every error Parse returns.
var ErrMalformed = errors.New("malformed pkcs11 uri")

// ParseError describes why Parse rejected its input. It never holds the
// value of "pin-value".
type ParseError struct {
	// Part names what is wrong, e.g. `path attribute "slot-id"`,
	// `percent-encoding at offset 17` or `scheme`. Offsets are byte offsets
	// into the input.
	Part string
	// Reason says what is wrong with it.
	Reason string
}

func (e *ParseError) Error() string { return "pkcs11 uri: " + e.Part + ": " + e.Reason }

// Unwrap returns ErrMalformed.
func (e *ParseError) Unwrap() error { return ErrMalformed }

// URI is a parsed PKCS#11 URI. Fields hold percent-decoded values; an empty
// field means the attribute was absent.
//
// BUG(hsmkeys): an attribute with an empty value ("token=") is stored like an
// absent one, so such a URI matches any token rather than only a token with
// an empty label.
type URI struct {
	// Path attributes, RFC 7512 §2.3.
	Token, Manufacturer, Serial, Model      string // CK_TOKEN_INFO
	LibraryManufacturer, LibraryDescription string // CK_INFO
	LibraryVersion                          string // "major" or "major.minor", in decimal
	SlotDescription, SlotManufacturer       string // CK_SLOT_INFO
	SlotID                                  *uint  // "slot-id", a CK_SLOT_ID that fits 32 bits
	Object                                  string // CKA_LABEL
	Type                                    string // "public", "private", "cert", "secret-key" or "data"
	ID                                      []byte // CKA_ID, raw bytes

	// Query attributes, RFC 7512 §2.3.
	ModulePath string // absolute path of the PKCS#11 module
	ModuleName string // module name without path or suffix
	PINSource  string // where to read the PIN, e.g. "file:/run/pin" or "|/bin/getpin"
	// PINValue is the PIN itself. It is never printed, and not encoded
	// as JSON, so that a URI stays safe to log.
	PINValue []byte `json:"-"`
}

// Allowed unencoded bytes, RFC 7512 §2.3 (pk11-pchar, pk11-qchar).
var pathChars, queryChars [256]bool

func init() {
	const unreserved = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
	const resAvail = ":[]@!$'()*+,="
	for _, c := range []byte(unreserved + resAvail) {
		pathChars[c] = true
		queryChars[c] = true
	}
	pathChars['&'] = true
	for _, c := range []byte("/?|") {
		queryChars[c] = true
	}
}

// attr describes one standard attribute.
type attr struct {
	query bool
	// set stores the decoded value v; it returns a reason when v is invalid.
	// Reasons never contain v.
	set func(u *URI, v []byte) string
}

func setString(f func(*URI) *string) func(*URI, []byte) string {
	return func(u *URI, v []byte) string { *f(u) = string(v); return "" }
}

var attrs = map[string]attr{
	"token":                {set: setString(func(u *URI) *string { return &u.Token })},
	"manufacturer":         {set: setString(func(u *URI) *string { return &u.Manufacturer })},
	"serial":               {set: setString(func(u *URI) *string { return &u.Serial })},
	"model":                {set: setString(func(u *URI) *string { return &u.Model })},
	"library-manufacturer": {set: setString(func(u *URI) *string { return &u.LibraryManufacturer })},
	"library-description":  {set: setString(func(u *URI) *string { return &u.LibraryDescription })},
	"library-version":      {set: setLibraryVersion},
	"slot-description":     {set: setString(func(u *URI) *string { return &u.SlotDescription })},
	"slot-manufacturer":    {set: setString(func(u *URI) *string { return &u.SlotManufacturer })},
	"slot-id":              {set: setSlotID},
	"object":               {set: setString(func(u *URI) *string { return &u.Object })},
	"type":                 {set: setType},
	"id":                   {set: setID},
	"module-path":          {query: true, set: setString(func(u *URI) *string { return &u.ModulePath })},
	"module-name":          {query: true, set: setString(func(u *URI) *string { return &u.ModuleName })},
	"pin-source":           {query: true, set: setString(func(u *URI) *string { return &u.PINSource })},
	"pin-value":            {query: true, set: setPINValue},
}

// pk11-lib-ver = "library-version" "=" 1*DIGIT [ "." 1*DIGIT ]
func setLibraryVersion(u *URI, v []byte) string {
	major, minor, dot := strings.Cut(string(v), ".")
	if !isDigits(major) || dot && !isDigits(minor) {
		return `want "major" or "major.minor" in decimal`
	}
	u.LibraryVersion = string(v)
	return ""
}

// pk11-slot-id = "slot-id" "=" 1*DIGIT; a CK_SLOT_ID is a CK_ULONG, which is
// 32 bits on some platforms, so larger values are refused everywhere.
func setSlotID(u *URI, v []byte) string {
	const reason = "want a decimal integer from 0 to 4294967295"
	if !isDigits(string(v)) {
		return reason
	}
	n, err := strconv.ParseUint(string(v), 10, 32)
	if err != nil {
		return reason
	}
	id := uint(n)
	u.SlotID = &id
	return ""
}

var types = []string{"public", "private", "cert", "secret-key", "data"}

func setType(u *URI, v []byte) string {
	for _, t := range types {
		if string(v) == t {
			u.Type = t
			return ""
		}
	}
	return "want one of " + strings.Join(types, ", ")
}

func setID(u *URI, v []byte) string {
	if len(v) > 0 {
		u.ID = v
	}
	return ""
}

// pin-source and pin-value together SHOULD be refused (RFC 7512 §2.3); the
// check is in Parse because it depends on both.
func setPINValue(u *URI, v []byte) string {
	if len(v) > 0 {
		u.PINValue = v
	}
	return ""
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// Parse parses a PKCS#11 URI. The scheme is case-insensitive (RFC 3986
// §3.1); attribute names are case-sensitive. Errors are *ParseError.
func Parse(s string) (*URI, error) {
	if len(s) > MaxLength {
		return nil, &ParseError{"input", fmt.Sprintf("longer than %d bytes", MaxLength)}
	}
	if len(s) < len(scheme) || !asciiEqualFold(s[:len(scheme)], scheme) {
		return nil, &ParseError{"scheme", `want "pkcs11:"`}
	}
	// pk11-URI = "pkcs11:" pk11-path [ "?" pk11-query ]; "?" is not a
	// pk11-pchar, so the first one ends the path.
	rest := s[len(scheme):]
	path, query, hasQuery := strings.Cut(rest, "?")
	u := new(URI)
	seen := make(map[string]bool)
	if err := parseComponent(u, seen, path, len(scheme), false); err != nil {
		return nil, err
	}
	if hasQuery {
		if err := parseComponent(u, seen, query, len(scheme)+len(path)+1, true); err != nil {
			return nil, err
		}
	}
	if seen["pin-source"] && seen["pin-value"] {
		return nil, &ParseError{`query attribute "pin-value"`, `cannot be used with "pin-source"`}
	}
	return u, nil
}

// parseComponent parses the path (attributes separated by ';') or the query
// (separated by '&'); off is the offset of comp in the input.
func parseComponent(u *URI, seen map[string]bool, comp string, off int, query bool) error {
	if comp == "" {
		return nil // both components may be empty
	}
	kind, sep, chars, other := "path", ";", &pathChars, "query"
	if query {
		kind, sep, chars, other = "query", "&", &queryChars, "path"
	}
	for i, raw := range strings.Split(comp, sep) {
		name, value, hasEq := strings.Cut(raw, "=")
		a, known := attrs[name]
		vendor := strings.HasPrefix(name, "x-") && len(name) > 2 && validName(name)
		// Only standard names are echoed freely. A mistyped URI may hold a
		// PIN where a name should be ("?1234"), and an unencoded '&' in a
		// PIN turns its tail into a name ("pin-value=12&34=").
		where := fmt.Sprintf("%s attribute %d", kind, i+1)
		if known || (hasEq && validName(name) && !(query && seen["pin-value"])) {
			where = fmt.Sprintf("%s attribute %q", kind, name)
		}
		switch {
		case name == "":
			return &ParseError{where, "empty attribute name"}
		case !validName(name):
			return &ParseError{where, "invalid attribute name"}
		case !hasEq:
			return &ParseError{where, "missing '='"}
		case known && a.query != query:
			return &ParseError{where, "is a " + other + " attribute"}
		case !known && !vendor:
			if _, ok := attrs[strings.ToLower(name)]; ok {
				return &ParseError{where, fmt.Sprintf("unknown attribute (names are case-sensitive: want %q)", strings.ToLower(name))}
			}
			return &ParseError{where, `unknown attribute (vendor attributes start with "x-")`}
		}
		// Duplicate vendor query attributes are allowed (RFC 7512 §2.3);
		// any other duplicate is an error.
		if seen[name] && !(vendor && query) {
			return &ParseError{where, "duplicate attribute"}
		}
		seen[name] = true
		v, err := decode(value, off+len(name)+1, chars, where, name == "pin-value")
		if err != nil {
			return err
		}
		if !vendor {
			if reason := a.set(u, v); reason != "" {
				return &ParseError{where, reason}
			}
		}
		off += len(raw) + 1
	}
	return nil
}

// validName reports whether s is made of ALPHA / DIGIT / "-" / "_", the
// characters of pk11-v-attr-nm-char; standard names use a subset.
func validName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// decode percent-decodes s, which starts at offset off of the input, and
// checks that every unencoded byte is in chars. Errors never contain a byte
// of a secret value.
func decode(s string, off int, chars *[256]bool, where string, secret bool) ([]byte, error) {
	out := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '%':
			if i+2 >= len(s) || !isHex(s[i+1]) || !isHex(s[i+2]) {
				return nil, &ParseError{
					fmt.Sprintf("percent-encoding at offset %d", off+i),
					"in " + where + ": want two hex digits after '%'",
				}
			}
			out = append(out, unhex(s[i+1])<<4|unhex(s[i+2]))
			i += 2
		case chars[c]:
			out = append(out, c)
		default:
			what := "character"
			if !secret {
				what = describe(c)
			}
			return nil, &ParseError{
				fmt.Sprintf("character at offset %d", off+i),
				what + " in " + where + " must be percent-encoded",
			}
		}
	}
	return out, nil
}

func describe(c byte) string {
	if c >= 0x20 && c < 0x7f {
		return strconv.QuoteRune(rune(c))
	}
	return fmt.Sprintf("byte 0x%02x", c)
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c <= 'F':
		return c - 'A' + 10
	default:
		return c - 'a' + 10
	}
}

// asciiEqualFold is strings.EqualFold for ASCII only, so that, say, the
// Kelvin sign does not pass for a "k" in the scheme.
func asciiEqualFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}
