package provider

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/hsmkeys/hsmkeys/provider/internal/p11"
	"github.com/hsmkeys/hsmkeys/provider/internal/pkcs11uri"
)

// ErrAmbiguous: a URI names several objects where one was asked for (for
// example an object URI with a label but no id, on a KEK with several
// versions).
var ErrAmbiguous = errors.New("several objects match")

// URI is the KEK's RFC 7512 object URI on token t: t's URI with object
// (CKA_LABEL), id (CKA_ID) and type. An AES KEK is a secret-key; an RSA KEK
// is named by its wrapping half, type=public (its private half, when the
// token holds one, has the same label and id: type=private names the same
// KEK). The URI names this exact version, so KEKByURI finds it again.
func (k *KEK) URI(t TokenInfo) string {
	typ := "secret-key"
	if k.Type.IsRSA() || k.handles().Kind != p11.KindAES {
		typ = "public"
	}
	return pkcs11uri.URI{
		Token: t.Label, Serial: t.Serial, Model: t.Model, Manufacturer: t.Manufacturer,
		Object: k.Label, ID: k.ID, Type: typ,
	}.String()
}

// isURI reports whether a KEK name is a PKCS#11 URI rather than a label.
func isURI(name string) bool {
	return len(name) >= 7 && strings.EqualFold(name[:7], "pkcs11:")
}

// KEKByURI returns the one KEK an RFC 7512 object URI names, for example
//
//	pkcs11:token=hsmkeys;object=backup;id=%00%00%00%02%A1...;type=secret-key
//
// The URI's token attributes (token, serial, model, manufacturer, slot-*,
// library-*) must match this provider's token and module, or it is
// ErrNotFound; object, id and type select among its KEKs (type secret-key
// for AES KEKs, public or private for RSA ones; cert and data name no
// KEK). A URI that names no object or id is ErrInvalidInput; one that
// matches several KEK versions is ErrAmbiguous (add the id that 'kek list'
// prints); none, ErrNotFound. The PIN attributes and module attributes of
// the query are not used here: the provider is open already.
func (p *Provider) KEKByURI(ctx context.Context, uri string) (*KEK, error) {
	u, err := pkcs11uri.Parse(uri)
	if err != nil {
		return nil, fmt.Errorf("%w: kek %w", ErrInvalidInput, err)
	}
	if u.Object == "" && len(u.ID) == 0 {
		return nil, fmt.Errorf("%w: kek uri %s names no object: want object= (the KEK's name) and id=", ErrInvalidInput, u)
	}
	if err := p.begin(); err != nil {
		return nil, err
	}
	why, err := p.otherToken(u)
	p.end()
	if err != nil {
		return nil, err
	}
	if why != "" {
		return nil, fmt.Errorf("%w: kek uri %s: %s", ErrNotFound, u, why)
	}
	var want func(*KEK) bool
	switch u.Type {
	case "":
		want = func(*KEK) bool { return true }
	case "secret-key":
		want = func(k *KEK) bool { return k.handles().Kind == p11.KindAES }
	case "public":
		want = func(k *KEK) bool { return k.handles().Kind != p11.KindAES }
	case "private":
		want = func(k *KEK) bool { o := k.handles(); return o.Kind != p11.KindAES && o.Unwrap != 0 }
	default:
		return nil, fmt.Errorf("%w: kek uri %s: no kek is of type %s", ErrNotFound, u, u.Type)
	}
	ks, _, err := p.findKEKs(ctx, u.Object, u.ID) // foreign objects never match
	if err != nil {
		return nil, err
	}
	var match []*KEK
	for _, k := range ks {
		// findKEKs already searched by label and id; compare again, in
		// case a token matches templates loosely.
		if (u.Object == "" || k.Label == u.Object) && (len(u.ID) == 0 || bytes.Equal(k.ID, u.ID)) && want(k) {
			match = append(match, k)
		}
	}
	switch len(match) {
	case 0:
		return nil, fmt.Errorf("%w: no kek matches %s", ErrNotFound, u)
	case 1:
	default:
		var names []string
		for _, k := range match {
			names = append(names, k.URI(p.token))
		}
		return nil, fmt.Errorf("%w: %d keks match %s: %s", ErrAmbiguous, len(match), u, strings.Join(names, ", "))
	}
	k := match[0]
	if err := k.usable(); err != nil {
		return nil, err
	}
	p.keks.put(k)
	return k, nil
}

// otherToken says why u names a token other than p's ("" if it does not).
func (p *Provider) otherToken(u *pkcs11uri.URI) (string, error) {
	t := p.token
	var diff []string
	cmp := func(name, want, have string) {
		if want != "" && want != have {
			diff = append(diff, fmt.Sprintf("%s %q (this token's is %q)", name, want, have))
		}
	}
	cmp("token", u.Token, t.Label)
	cmp("serial", u.Serial, t.Serial)
	cmp("model", u.Model, t.Model)
	cmp("manufacturer", u.Manufacturer, t.Manufacturer)
	cmp("slot-description", u.SlotDescription, t.SlotDescription)
	cmp("slot-manufacturer", u.SlotManufacturer, t.SlotManufacturer)
	if u.SlotID != nil && *u.SlotID != t.Slot {
		diff = append(diff, fmt.Sprintf("slot-id %d (this token is in slot %d)", *u.SlotID, t.Slot))
	}
	m := tokenMatch{libManufacturer: u.LibraryManufacturer, libDescription: u.LibraryDescription, libVersion: u.LibraryVersion}
	lib, err := m.library(p.mod)
	if err != nil {
		return "", err
	}
	if lib != "" {
		diff = append(diff, lib)
	}
	if len(diff) == 0 {
		return "", nil
	}
	return "it names another token: " + strings.Join(diff, " and "), nil
}
