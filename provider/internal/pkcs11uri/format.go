package pkcs11uri

import (
	"fmt"
	"io"
	"strconv"
	"strings"
)

// The printing methods have value receivers so that a URI and a *URI print
// the same way; with pointer receivers, fmt would print a URI value field
// by field, PIN included.

// String returns u as a PKCS#11 URI, with attributes in a fixed order and
// bytes outside the RFC 7512 §2.3 allowed sets percent-encoded (ID is
// always fully percent-encoded).
//
// "pin-value" is left out, so the result is safe to log. It is left out
// rather than replaced by a placeholder because a placeholder would be sent
// to the token as a wrong PIN, and wrong PINs lock tokens.
func (u URI) String() string {
	var path, query []string
	add := func(to *[]string, name, v string, chars *[256]bool) {
		if v == "" {
			return
		}
		var b strings.Builder
		b.WriteString(name)
		b.WriteByte('=')
		encode(&b, v, chars)
		*to = append(*to, b.String())
	}
	add(&path, "library-manufacturer", u.LibraryManufacturer, &pathChars)
	add(&path, "library-description", u.LibraryDescription, &pathChars)
	add(&path, "library-version", u.LibraryVersion, &pathChars)
	add(&path, "slot-manufacturer", u.SlotManufacturer, &pathChars)
	add(&path, "slot-description", u.SlotDescription, &pathChars)
	add(&path, "slot-id", slotID(u.SlotID), &pathChars)
	add(&path, "manufacturer", u.Manufacturer, &pathChars)
	add(&path, "model", u.Model, &pathChars)
	add(&path, "serial", u.Serial, &pathChars)
	add(&path, "token", u.Token, &pathChars)
	add(&path, "object", u.Object, &pathChars)
	add(&path, "type", u.Type, &pathChars)
	if len(u.ID) > 0 {
		var b strings.Builder
		b.WriteString("id=")
		for _, c := range u.ID {
			writeHex(&b, c)
		}
		path = append(path, b.String())
	}
	add(&query, "module-name", u.ModuleName, &queryChars)
	add(&query, "module-path", u.ModulePath, &queryChars)
	add(&query, "pin-source", u.PINSource, &queryChars)

	s := scheme + strings.Join(path, ";")
	if len(query) > 0 {
		s += "?" + strings.Join(query, "&")
	}
	return s
}

func slotID(p *uint) string {
	if p == nil {
		return ""
	}
	return strconv.FormatUint(uint64(*p), 10)
}

func encode(b *strings.Builder, s string, chars *[256]bool) {
	for i := 0; i < len(s); i++ {
		if c := s[i]; chars[c] {
			b.WriteByte(c)
		} else {
			writeHex(b, c)
		}
	}
}

func writeHex(b *strings.Builder, c byte) {
	const hex = "0123456789ABCDEF"
	b.WriteByte('%')
	b.WriteByte(hex[c>>4])
	b.WriteByte(hex[c&15])
}

// GoString returns u as a Go composite literal for %#v, with PINValue
// replaced by a comment.
func (u URI) GoString() string {
	var b strings.Builder
	b.WriteString("pkcs11uri.URI{")
	sep := ""
	field := func(name, v string) {
		b.WriteString(sep)
		b.WriteString(name)
		b.WriteByte(':')
		b.WriteString(v)
		sep = ", "
	}
	for _, f := range []struct{ name, v string }{
		{"Token", u.Token},
		{"Manufacturer", u.Manufacturer},
		{"Serial", u.Serial},
		{"Model", u.Model},
		{"LibraryManufacturer", u.LibraryManufacturer},
		{"LibraryDescription", u.LibraryDescription},
		{"LibraryVersion", u.LibraryVersion},
		{"SlotDescription", u.SlotDescription},
		{"SlotManufacturer", u.SlotManufacturer},
	} {
		if f.v != "" {
			field(f.name, strconv.Quote(f.v))
		}
	}
	if u.SlotID != nil {
		field("SlotID", "new(uint("+slotID(u.SlotID)+"))")
	}
	if u.Object != "" {
		field("Object", strconv.Quote(u.Object))
	}
	if u.Type != "" {
		field("Type", strconv.Quote(u.Type))
	}
	if u.ID != nil {
		field("ID", fmt.Sprintf("%#v", u.ID))
	}
	for _, f := range []struct{ name, v string }{
		{"ModulePath", u.ModulePath},
		{"ModuleName", u.ModuleName},
		{"PINSource", u.PINSource},
	} {
		if f.v != "" {
			field(f.name, strconv.Quote(f.v))
		}
	}
	if u.PINValue != nil {
		field("PINValue", "nil /* redacted */")
	}
	b.WriteByte('}')
	return b.String()
}

// Format makes every fmt verb print String (or GoString for %#v), so that
// no verb reveals PINValue.
func (u URI) Format(f fmt.State, verb rune) {
	switch verb {
	case 'v', 's', 'q', 'x', 'X':
		if verb == 'v' && f.Flag('#') {
			io.WriteString(f, u.GoString())
			return
		}
		fmt.Fprintf(f, fmt.FormatString(f, verb), u.String())
	default:
		fmt.Fprintf(f, "%%!%c(pkcs11uri.URI)", verb)
	}
}
