package cms

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestArmor(t *testing.T) {
	der := []byte{0x30, 3, 1, 2, 3}
	pem := Armor(der)
	require.Equal(t, "-----BEGIN CMS-----\nMAMBAgM=\n-----END CMS-----\n", string(pem))
	for _, in := range [][]byte{pem, append([]byte(" \r\n\t"), pem...), append(pem, "\n\n"...)} {
		got, ok := Unarmor(in)
		require.True(t, ok)
		require.Equal(t, der, got)
		require.Equal(t, FormatPEM, Sniff(in))
	}
	for _, in := range []string{
		"junk\n" + string(pem),
		string(pem) + "junk",
		"-----BEGIN PKCS7-----\nMAMBAgM=\n-----END PKCS7-----\n",
		"-----BEGIN CMS-----\nProc-Type: 4,ENCRYPTED\n\nMAMBAgM=\n-----END CMS-----\n",
		"-----BEGIN CMS-----\nMAMBAgM\n-----END CMS-----\n",
		"",
	} {
		_, ok := Unarmor([]byte(in))
		require.False(t, ok, in)
	}
	require.Equal(t, FormatDER, Sniff(der))
	require.Equal(t, FormatUnknown, Sniff([]byte("hello")))
	require.Equal(t, FormatUnknown, Sniff(nil))
	require.Equal(t, FormatUnknown, Sniff([]byte("-----BEGIN CERTIFICATE-----")))
	require.False(t, IsArmored([]byte("-----BEGIN CMS----")))
}
