package pkcs11uri

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func slot(n uint) *uint { return &n }

func TestParseGood(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want URI
	}{
		{"empty", "pkcs11:", URI{}},
		{"empty query", "pkcs11:?", URI{}},
		{"scheme case", "PKCS11:token=ci", URI{Token: "ci"}},
		{
			"softhsm",
			"pkcs11:token=ci;serial=0123abcd?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/path",
			URI{Token: "ci", Serial: "0123abcd", ModulePath: "/usr/lib/softhsm/libsofthsm2.so", PINSource: "file:/path"},
		},
		{"id bytes", "pkcs11:id=%01%02", URI{ID: []byte{1, 2}}},
		{"id mixed", "pkcs11:id=a%ffb", URI{ID: []byte{'a', 0xff, 'b'}}},
		{"slot-id", "pkcs11:slot-id=4294967295", URI{SlotID: slot(4294967295)}},
		{"slot-id zero", "pkcs11:slot-id=000", URI{SlotID: slot(0)}},
		{"pin-source command", "pkcs11:?pin-source=|/bin/getpin%20--token%20ci", URI{PINSource: "|/bin/getpin --token ci"}},
		{"pin-value", "pkcs11:token=ci?pin-value=12%2634", URI{Token: "ci", PINValue: []byte("12&34")}},
		{"vendor attributes", "pkcs11:x-a=1;token=t?x-b=2&x-b=3", URI{Token: "t"}},
		{"every type", "pkcs11:type=secret-key", URI{Type: "secret-key"}},
		{"percent-encoded type", "pkcs11:type=%64ata", URI{Type: "data"}},
		{"reserved in path", "pkcs11:token=:[]@!$'()*+,=&", URI{Token: ":[]@!$'()*+,=&"}},
		{"reserved in query", "pkcs11:?module-name=:[]@!$'()*+,=/?|", URI{ModuleName: ":[]@!$'()*+,=/?|"}},
		{
			"all path attributes",
			"pkcs11:token=t;manufacturer=m;serial=s;model=mo;library-manufacturer=lm;library-description=ld;" +
				"library-version=2.40;slot-description=sd;slot-manufacturer=sm;slot-id=7;object=o;type=cert;id=%AB",
			URI{
				Token: "t", Manufacturer: "m", Serial: "s", Model: "mo",
				LibraryManufacturer: "lm", LibraryDescription: "ld", LibraryVersion: "2.40",
				SlotDescription: "sd", SlotManufacturer: "sm", SlotID: slot(7),
				Object: "o", Type: "cert", ID: []byte{0xab},
			},
		},

		// RFC 7512 §3.
		{"rfc 1", "pkcs11:object=my-pubkey;type=public", URI{Object: "my-pubkey", Type: "public"}},
		{
			"rfc 2", "pkcs11:object=my-key;type=private?pin-source=file:/etc/token",
			URI{Object: "my-key", Type: "private", PINSource: "file:/etc/token"},
		},
		{
			"rfc 3",
			"pkcs11:token=The%20Software%20PKCS%2311%20Softtoken;manufacturer=Snake%20Oil,%20Inc.;model=1.0;" +
				"object=my-certificate;type=cert;id=%69%95%3E%5C%F4%BD%EC%91;serial=?pin-source=file:/etc/token_pin",
			URI{
				Token: "The Software PKCS#11 Softtoken", Manufacturer: "Snake Oil, Inc.", Model: "1.0",
				Object: "my-certificate", Type: "cert", ID: []byte{0x69, 0x95, 0x3e, 0x5c, 0xf4, 0xbd, 0xec, 0x91},
				PINSource: "file:/etc/token_pin",
			},
		},
		{
			"rfc 4", "pkcs11:object=my-sign-key;type=private?module-name=mypkcs11",
			URI{Object: "my-sign-key", Type: "private", ModuleName: "mypkcs11"},
		},
		{
			"rfc 5", "pkcs11:object=my-sign-key;type=private?module-path=/mnt/libmypkcs11.so.1",
			URI{Object: "my-sign-key", Type: "private", ModulePath: "/mnt/libmypkcs11.so.1"},
		},
		{
			"rfc 6", "pkcs11:token=Software%20PKCS%2311%20softtoken;manufacturer=Snake%20Oil,%20Inc.?pin-value=the-pin",
			URI{Token: "Software PKCS#11 softtoken", Manufacturer: "Snake Oil, Inc.", PINValue: []byte("the-pin")},
		},
		{"rfc 7", "pkcs11:slot-description=Sun%20Metaslot", URI{SlotDescription: "Sun Metaslot"}},
		{
			"rfc 8",
			"pkcs11:library-manufacturer=Snake%20Oil,%20Inc.;library-description=Soft%20Token%20Library;library-version=1.23",
			URI{LibraryManufacturer: "Snake Oil, Inc.", LibraryDescription: "Soft Token Library", LibraryVersion: "1.23"},
		},
		{
			"rfc 9", "pkcs11:token=My%20token%25%20created%20by%20Joe;library-version=3;id=%01%02%03%Ba%dd%Ca%fe%04%05%06",
			URI{Token: "My token% created by Joe", LibraryVersion: "3", ID: []byte{1, 2, 3, 0xba, 0xdd, 0xca, 0xfe, 4, 5, 6}},
		},
		{
			"rfc 10", "pkcs11:token=A%20name%20with%20a%20substring%20%25%3B;object=my-certificate;type=cert",
			URI{Token: "A name with a substring %;", Object: "my-certificate", Type: "cert"},
		},
		{
			"rfc 11", "pkcs11:token=Name%20with%20a%20small%20A%20with%20acute:%20%C3%A1;object=my-certificate;type=cert",
			URI{Token: "Name with a small A with acute: á", Object: "my-certificate", Type: "cert"},
		},
		{
			// The RFC's last example names its vendor attributes "vendor-aaa"
			// and "vendor-bbb", which its own ABNF does not allow; here they
			// carry the "x-" prefix the ABNF requires.
			"rfc 12 with x- names",
			"pkcs11:token=my-token;object=my-certificate;type=cert;x-vendor-aaa=value-a?pin-source=file:/etc/token_pin&x-vendor-bbb=value-b",
			URI{Token: "my-token", Object: "my-certificate", Type: "cert", PINSource: "file:/etc/token_pin"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.in)
			require.NoError(t, err)
			require.Equal(t, &tt.want, got)
		})
	}
}

func TestParseBad(t *testing.T) {
	tests := []struct {
		name string
		in   string
		part string
	}{
		{"no scheme", "token=ci", "scheme"},
		{"other scheme", "pkcs12:token=ci", "scheme"},
		{"short", "pkcs", "scheme"},
		{"kelvin sign", "p\u212acs11:", "scheme"},
		{"too long", "pkcs11:token=" + strings.Repeat("a", MaxLength), "input"},
		{"empty name", "pkcs11:=ci", "path attribute 1"},
		{"trailing semicolon", "pkcs11:token=ci;", "path attribute 2"},
		{"double ampersand", "pkcs11:?pin-source=a&&module-name=b", "query attribute 2"},
		{"bad name", "pkcs11:to ken=ci", "path attribute 1"},
		{"missing equals", "pkcs11:token", `path attribute "token"`},
		{"unknown", "pkcs11:label=ci", `path attribute "label"`},
		{"rfc 12 as printed", "pkcs11:token=my-token;vendor-aaa=value-a", `path attribute "vendor-aaa"`},
		{"bare x-", "pkcs11:x-=1", `path attribute "x-"`},
		{"upper case name", "pkcs11:Token=ci", `path attribute "Token"`},
		{"query attr in path", "pkcs11:pin-source=file:/p", `path attribute "pin-source"`},
		{"path attr in query", "pkcs11:?token=ci", `query attribute "token"`},
		{"duplicate", "pkcs11:token=a;token=b", `path attribute "token"`},
		{"duplicate query", "pkcs11:?module-name=a&module-name=b", `query attribute "module-name"`},
		{"duplicate vendor path", "pkcs11:x-a=1;x-a=2", `path attribute "x-a"`},
		{"pin-source and pin-value", "pkcs11:?pin-source=file:/p&pin-value=1", `query attribute "pin-value"`},
		{"slot-id letters", "pkcs11:slot-id=abc", `path attribute "slot-id"`},
		{"slot-id empty", "pkcs11:slot-id=", `path attribute "slot-id"`},
		{"slot-id sign", "pkcs11:slot-id=+1", `path attribute "slot-id"`},
		{"slot-id too big", "pkcs11:slot-id=4294967296", `path attribute "slot-id"`},
		{"slot-id hex", "pkcs11:slot-id=0x1", `path attribute "slot-id"`},
		{"type", "pkcs11:type=certificate", `path attribute "type"`},
		{"type empty", "pkcs11:type=", `path attribute "type"`},
		{"library-version", "pkcs11:library-version=1.", `path attribute "library-version"`},
		{"library-version letters", "pkcs11:library-version=v1", `path attribute "library-version"`},
		{"percent truncated", "pkcs11:id=%0", "percent-encoding at offset 10"},
		{"percent at end", "pkcs11:id=%", "percent-encoding at offset 10"},
		{"percent not hex", "pkcs11:token=a;id=%01%zz", "percent-encoding at offset 21"},
		{"percent in query", "pkcs11:?module-name=a%", "percent-encoding at offset 21"},
		{"space", "pkcs11:token=a b", "character at offset 14"},
		{"quote", `pkcs11:token="a"`, "character at offset 13"},
		{"slash in path", "pkcs11:token=a/b", "character at offset 14"},
		{"ampersand in query", "pkcs11:?module-name=a&b", "query attribute 2"},
		{"ampersand in pin", "pkcs11:?pin-value=12&34=", "query attribute 2"},
		{"unknown after pin", "pkcs11:?pin-value=12&abc=", "query attribute 2"},
		{"known after pin", "pkcs11:?pin-value=12&token=", `query attribute "token"`},
		{"missing equals unknown", "pkcs11:foo", "path attribute 1"},
		{"hash", "pkcs11:token=a#b", "character at offset 14"},
		{"non-ascii", "pkcs11:token=á", "character at offset 13"},
		{"pipe in path", "pkcs11:token=a|b", "character at offset 14"},
		{"control", "pkcs11:?module-path=/a\nb", "character at offset 22"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u, err := Parse(tt.in)
			require.Nil(t, u)
			var pe *ParseError
			require.ErrorAs(t, err, &pe)
			require.ErrorIs(t, err, ErrMalformed)
			require.Equal(t, tt.part, pe.Part, "error: %v", err)
			require.True(t, strings.HasPrefix(err.Error(), "pkcs11 uri: "+tt.part+": "))
			require.Equal(t, strings.ToLower(err.Error()[:1]), err.Error()[:1])
		})
	}
}

func TestErrorMessage(t *testing.T) {
	_, err := Parse("pkcs11:slot-id=x")
	require.EqualError(t, err, `pkcs11 uri: path attribute "slot-id": want a decimal integer from 0 to 4294967295`)
	_, err = Parse("pkcs11:token=a b")
	require.EqualError(t, err, `pkcs11 uri: character at offset 14: ' ' in path attribute "token" must be percent-encoded`)
	_, err = Parse("pkcs11:id=%0g")
	require.EqualError(t, err, `pkcs11 uri: percent-encoding at offset 10: in path attribute "id": want two hex digits after '%'`)
}

// A malformed pin-value must not show up in the error, whole or in part.
func TestErrorHidesPIN(t *testing.T) {
	for _, in := range []string{
		"pkcs11:?pin-value=s3cr3t%zz",
		"pkcs11:?pin-value=s3cr3t%",
		"pkcs11:?pin-value=s3cr3t#",
		"pkcs11:?pin-value=s3cr3t\"",
		"pkcs11:?pin-value=s3cr3t&pin-source=file:/p",
		"pkcs11:?pin-source=file:/p&pin-value=s3cr3t",
		"pkcs11:?pin-value=s3cr3t&pin-value=s3cr3t",
		"pkcs11:pin-value=s3cr3t",
		"pkcs11:?s3cr3t",
		"pkcs11:?s3cr3t!",
		"pkcs11:?s3cr3t!=1",
	} {
		t.Run(in, func(t *testing.T) {
			_, err := Parse(in)
			require.Error(t, err)
			msg := err.Error()
			require.NotContains(t, msg, "s3cr3t")
			require.NotContains(t, msg, "'#'")
			require.NotContains(t, msg, `'"'`)
		})
	}
}

func TestString(t *testing.T) {
	tests := []struct {
		in, want string
	}{
		{"pkcs11:", "pkcs11:"},
		{"PKCS11:?", "pkcs11:"},
		{"pkcs11:id=%ab%CD", "pkcs11:id=%AB%CD"},
		{"pkcs11:id=ab", "pkcs11:id=%61%62"},
		{"pkcs11:token=%61%20b", "pkcs11:token=a%20b"},
		{"pkcs11:token=ci;serial=0123abcd?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/path",
			"pkcs11:serial=0123abcd;token=ci?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/path"},
		{"pkcs11:token=ci?pin-value=1234", "pkcs11:token=ci"},
		{"pkcs11:?pin-value=1234", "pkcs11:"},
		{"pkcs11:token=%3B%3F%2F%7C%25?pin-source=%3B%3F%2F%7C%25%26", "pkcs11:token=%3B%3F%2F%7C%25?pin-source=%3B?/|%25%26"},
		{"pkcs11:slot-id=007;x-a=1", "pkcs11:slot-id=7"},
		// Only the first '?' starts the query, so this is a pin-source.
		{"pkcs11:?pin-source=a?pin-value=1", "pkcs11:?pin-source=a?pin-value=1"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			u, err := Parse(tt.in)
			require.NoError(t, err)
			require.Equal(t, tt.want, u.String())
		})
	}
}

// Every good URI survives String and Parse unchanged, except its PIN.
func TestRoundTrip(t *testing.T) {
	for _, in := range seeds {
		u, err := Parse(in)
		if err != nil {
			continue
		}
		t.Run(in, func(t *testing.T) {
			checkRoundTrip(t, u)
		})
	}
}

func checkRoundTrip(t *testing.T, u *URI) {
	s := u.String()
	u2, err := Parse(s)
	require.NoError(t, err, "String() = %q", s)
	want := *u
	want.PINValue = nil
	require.Equal(t, &want, u2, "String() = %q", s) // PINValue left out
	require.Nil(t, u2.PINValue)
	require.Equal(t, s, u2.String())
}

func TestPrintHidesPIN(t *testing.T) {
	const pin = "s3cr3t-PIN"
	u, err := Parse("pkcs11:token=ci;id=%01;slot-id=3?module-name=softhsm2&pin-value=" + pin)
	require.NoError(t, err)
	require.Equal(t, []byte(pin), u.PINValue)

	type wrapper struct {
		URI  URI
		Ptr  *URI
		List []URI
	}
	values := []any{u, *u, wrapper{*u, u, []URI{*u}}, []*URI{u}, map[string]URI{"k": *u}}
	verbs := []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d", "%10v", "%-40s", "%T"}
	for _, v := range values {
		for _, verb := range verbs {
			out := fmt.Sprintf(verb, v)
			require.NotContains(t, out, pin, "fmt %s of %T", verb, v)
			require.NotContains(t, out, fmt.Sprintf("%x", pin), "fmt %s of %T", verb, v)
			require.NotContains(t, out, fmt.Sprintf("%X", pin), "fmt %s of %T", verb, v)
			require.NotContains(t, out, fmt.Sprint([]byte(pin)), "fmt %s of %T", verb, v)
		}
	}
	b, err := json.Marshal(u)
	require.NoError(t, err)
	require.NotContains(t, string(b), "PINValue")

	require.Equal(t, "pkcs11:slot-id=3;token=ci;id=%01?module-name=softhsm2", fmt.Sprint(u))
	require.Equal(t,
		`pkcs11uri.URI{Token:"ci", SlotID:new(uint(3)), ID:[]byte{0x1}, ModuleName:"softhsm2", PINValue:nil /* redacted */}`,
		fmt.Sprintf("%#v", u))
	require.Equal(t, "%!d(pkcs11uri.URI)", fmt.Sprintf("%d", u))
}

func TestErrorsIs(t *testing.T) {
	_, err := Parse("http://example.com")
	require.True(t, errors.Is(err, ErrMalformed))
	require.False(t, errors.Is(err, errors.New("malformed pkcs11 uri")))
}

func ExampleParse() {
	u, err := Parse("pkcs11:token=ci;object=kek;id=%01%02?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-value=1234")
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(u.Token, u.Object, u.ID, u.ModulePath)
	fmt.Println(u) // pin-value is left out

	_, err = Parse("pkcs11:token=ci;slot-id=-1")
	fmt.Println(err)
	// Output:
	// ci kek [1 2] /usr/lib/softhsm/libsofthsm2.so
	// pkcs11:token=ci;object=kek;id=%01%02?module-path=/usr/lib/softhsm/libsofthsm2.so
	// pkcs11 uri: path attribute "slot-id": want a decimal integer from 0 to 4294967295
}
