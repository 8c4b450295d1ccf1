package cms

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func testManifest() *Manifest {
	return &Manifest{
		Version: ManifestVersion,
		KeyAlg:  KeyAlgAES256,
		KeyBits: 256,
		KCV:     []byte{0xab, 0xcd, 0xef},
		Created: time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC),
		Policy:  PolicyTrusted,
		KeyID:   []byte("0123456789abcdef"),
	}
}

func TestManifestRoundTrip(t *testing.T) {
	m := testManifest()
	der, err := MarshalManifest(m)
	require.NoError(t, err)
	require.Equal(t, "3056"+"06146981f6d0cdff898f8a90a389a7d0a2d2dce1ae03"+"020102"+"0c06616573323536"+"02020100"+"0403abcdef"+
		"180f32303235303330343035303630375a"+"0c0774727573746564"+
		"041030313233343536373839616263646566", hexString(der))
	got, err := ParseManifest(der)
	require.NoError(t, err)
	require.Equal(t, m, got)
	require.True(t, IsManifestLen(int64(len(der))))

	// Version 1, as exported keys were written before (no type): still read.
	m1 := testManifest()
	m1.Version = ManifestVersionLegacy
	der, err = MarshalManifest(m1)
	require.NoError(t, err)
	require.Equal(t, "3040"+"020101"+"0c06616573323536"+"02020100"+"0403abcdef"+
		"180f32303235303330343035303630375a"+"0c0774727573746564"+
		"041030313233343536373839616263646566", hexString(der))
	got, err = ParseManifest(der)
	require.NoError(t, err)
	require.Equal(t, m1, got)
	// A type with version 1, or version 2 without type, is neither form.
	for _, bad := range []string{
		"3056" + "06146981f6d0cdff898f8a90a389a7d0a2d2dce1ae03" + "020101",
		"3040" + "020102",
		"3056" + "06146981f6d0cdff898f8a90a389a7d0a2d2dce1ae04" + "020102", // another type
	} {
		b := unhex(bad + strings.TrimPrefix(hexString(der), "3040020101"))
		_, err := ParseManifest(b)
		require.ErrorIs(t, err, ErrUnsupported, bad)
	}

	// Local times and sub-second precision are normalised.
	m2 := testManifest()
	m2.KeyAlg, m2.KeyBits, m2.Policy = KeyAlgAES128, 128, PolicyNone
	m2.Created = time.Date(2025, 3, 4, 7, 6, 7, 999, time.FixedZone("x", 7200))
	der, err = MarshalManifest(m2)
	require.NoError(t, err)
	got, err = ParseManifest(der)
	require.NoError(t, err)
	require.Equal(t, testManifest().Created, got.Created)
	require.Equal(t, time.UTC, got.Created.Location())
}

func TestManifestRejects(t *testing.T) {
	cases := map[string]struct {
		mut func(*Manifest)
		err error
	}{
		"version 3":  {func(m *Manifest) { m.Version = 3 }, ErrUnsupported},
		"version 0":  {func(m *Manifest) { m.Version = 0 }, ErrUnsupported},
		"alg":        {func(m *Manifest) { m.KeyAlg = "des3" }, ErrUnsupported},
		"bits":       {func(m *Manifest) { m.KeyBits = 128 }, ErrMalformed},
		"policy":     {func(m *Manifest) { m.Policy = "Trusted" }, ErrUnsupported},
		"kcv":        {func(m *Manifest) { m.KCV = m.KCV[:2] }, ErrMalformed},
		"key id":     {func(m *Manifest) { m.KeyID = m.KeyID[:15] }, ErrMalformed},
		"zero time":  {func(m *Manifest) { m.Created = time.Time{} }, ErrMalformed},
		"year 10000": {func(m *Manifest) { m.Created = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC) }, ErrMalformed},
	}
	for name, c := range cases {
		m := testManifest()
		c.mut(m)
		_, err := MarshalManifest(m)
		require.ErrorIs(t, err, c.err, name)
	}

	good, err := MarshalManifest(testManifest())
	require.NoError(t, err)
	replace := func(old, new string) []byte {
		h := hexString(good)
		require.Contains(t, h, old)
		return unhex(strings.Replace(h, old, new, 1))
	}
	for name, c := range map[string]struct {
		der []byte
		err error
	}{
		"version 3":      {replace("020102", "020103"), ErrUnsupported},
		"trailing":       {append(good, 0), ErrMalformed},
		"truncated":      {good[:len(good)-1], ErrMalformed},
		"local time":     {replace("180f32303235303330343035303630375a", "181332303235303330343035303630372b30313030"), ErrMalformed},
		"fraction":       {replace("180f32303235303330343035303630375a", "181132303235303330343035303630372e355a"), ErrMalformed},
		"utctime":        {replace("180f32303235303330343035303630375a", "170d3235303330343035303630375a"), ErrMalformed},
		"printable alg":  {replace("0c06616573323536", "1306616573323536"), ErrMalformed},
		"unknown policy": {replace("0c0774727573746564", "0c0774727573746565"), ErrUnsupported},
		"year 0":         {replace("180f3230323530", "180f3030303030"), ErrMalformed},
		"month 13":       {replace("180f32303235303330", "180f32303235313330"), ErrMalformed},
		"empty":          {nil, ErrMalformed},
	} {
		_, err := ParseManifest(c.der)
		require.ErrorIs(t, err, c.err, name)
	}
}
