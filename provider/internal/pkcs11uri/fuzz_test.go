package pkcs11uri

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// seeds are added to the committed corpus in testdata/fuzz/FuzzParse and
// reused by TestRoundTrip.
var seeds = []string{
	"pkcs11:",
	"pkcs11:token=ci;serial=0123abcd?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/path",
	"pkcs11:token=The%20Software%20PKCS%2311%20Softtoken;manufacturer=Snake%20Oil,%20Inc.;model=1.0;" +
		"object=my-certificate;type=cert;id=%69%95%3E%5C%F4%BD%EC%91;serial=?pin-source=file:/etc/token_pin",
	"pkcs11:library-manufacturer=Snake%20Oil,%20Inc.;library-description=Soft%20Token%20Library;library-version=1.23",
	"pkcs11:token=My%20token%25%20created%20by%20Joe;library-version=3;id=%01%02%03%Ba%dd%Ca%fe%04%05%06",
	"pkcs11:slot-description=Sun%20Metaslot;slot-manufacturer=x;slot-id=4294967295",
	"pkcs11:token=:[]@!$'()*+,=&?module-name=:[]@!$'()*+,=/?|",
	"pkcs11:x-a=1;type=secret-key?x-b=2&x-b=3&pin-value=1234",
	"PKCS11:object=my-sign-key;type=private?module-name=mypkcs11",
	"pkcs11:id=%01%0",
	"pkcs11:token=a;token=b",
	"pkcs11:?pin-source=file:/p&pin-value=1",
	"pkcs11:Token=a b#",
}

// FuzzParse checks that Parse never panics, fails only with a *ParseError,
// and that what it accepts survives String and Parse unchanged (but for
// the PIN, which String leaves out).
func FuzzParse(f *testing.F) {
	for _, s := range seeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := Parse(s)
		if err != nil {
			var pe *ParseError
			require.ErrorAs(t, err, &pe)
			require.ErrorIs(t, err, ErrMalformed)
			require.Nil(t, u)
			require.NotEmpty(t, pe.Part)
			require.NotEmpty(t, pe.Reason)
			return
		}
		checkRoundTrip(t, u)
	})
}
