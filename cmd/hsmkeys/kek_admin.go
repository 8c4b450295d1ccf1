package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/hsmkeys/hsmkeys/provider"
)

var kekListSpec = spec{
	path:  "kek list",
	usage: "kek list",
	about: `Lists the KEKs on the token, oldest version first: name, version, id,
type, whether the SO made it trusted, whether the token holds its unwrapping
half, whether its wrap and unwrap templates are in force, whether each half
is restricted to its mechanisms (RSA: OAEP; AES: key wrap), whether its
value is protected at rest ("CLEAR" for an AES KEK on a token that stores
public objects in clear, such as SoftHSM), and the problems that make
hsmkeys refuse it, and its RFC 7512 object URI, which --kek takes wherever
it takes a name (the URI names that exact version). Objects that share a KEK's label or id, or look like a
KEK half, but that anyone could have made (not trusted, not private, not
matching) are listed apart as foreign objects: hsmkeys ignores them. Needs
the user PIN.`,
	examples: `hsmkeys kek list
hsmkeys --token hsmkeys kek list --json
hsmkeys --uri 'pkcs11:token=hsmkeys?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/secrets/hsm-pin' kek list`,
}

var kekDestroySpec = spec{
	path:  "kek destroy",
	usage: "kek destroy --label NAME [--id HEX] [--yes]",
	about: `Destroys one version of the KEK NAME (--id, as 'kek list' shows it), or
every version of it. Exported keys and messages wrapped only under a
destroyed version can never be opened again. Only the KEK's own halves are
destroyed: foreign objects with its label or id ('kek list') are not
hsmkeys's, and are left alone. Asks on the terminal first; without a
terminal, --yes is required. Needs the user PIN.`,
	examples: `hsmkeys kek destroy --label backup --id 00000001a1b2c3d4e5f60718293a4b5c
hsmkeys --uri 'pkcs11:token=hsmkeys?module-path=/usr/lib/softhsm/libsofthsm2.so' kek destroy --label old-backup --yes`,
}

func (c *cli) cmdKEKList(ctx context.Context, args []string) error {
	fs := c.newFlags(kekListSpec)
	c.pinFlags(fs, false)
	operands, err := c.parse(fs, args)
	if err != nil {
		return err
	}
	if err := noOperands(fs, operands); err != nil {
		return err
	}
	a, err := c.openAdmin(ctx, false)
	if err != nil {
		return err
	}
	defer a.Close()
	keks, err := a.KEKs(ctx)
	if err != nil {
		return err
	}
	foreign, err := a.ForeignObjects(ctx)
	if err != nil {
		return err
	}
	if c.json {
		out := make([]kekJSON, 0, len(keks)+len(foreign))
		for _, k := range keks {
			j := kekToJSON(k)
			j.URI = k.URI(a.Token())
			out = append(out, j)
		}
		for _, f := range foreign {
			out = append(out, foreignToJSON(f))
		}
		return c.writeJSON(out)
	}
	if len(keks) == 0 && len(foreign) == 0 {
		fmt.Fprintf(c.stderr, "hsmkeys: no KEK on token %s; make one with 'hsmkeys kek create --label NAME'\n", a.Token())
		return nil
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	if len(keks) > 0 {
		fmt.Fprintln(tw, "NAME\tVERSION\tID\tTYPE\tTRUSTED\tUNWRAP\tTEMPLATES\tRESTRICTED\tAT-REST\tPROBLEMS\tURI")
	}
	for _, k := range keks {
		problems := "-"
		if len(k.Problems) > 0 {
			problems = strings.Join(k.Problems, "; ")
			if k.Outdated {
				problems = "OUTDATED (refused for wrapping; create a new version and rewrap): " + problems
			}
		}
		atRest := "protected"
		if k.ExposedAtRest {
			atRest = "CLEAR"
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", k.Label, k.Version, hex.EncodeToString(k.ID), kekTypeName(k),
			yesNo(k.Trusted), yesNo(k.CanUnwrap()), enforced(templatesEnforced(k)), restricted(k.Restricted), atRest, problems, k.URI(a.Token()))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, k := range keks {
		if k.ExposedAtRest {
			fmt.Fprintf(c.stderr, "hsmkeys: warning: %s\n", exposedWarning(k, a.Profile()))
		}
	}
	if len(foreign) > 0 {
		fmt.Fprintf(c.stdout, "\nforeign objects (ignored: anyone could have made them; hsmkeys never uses or destroys them):\n")
		tw = tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "LABEL\tID\tCLASS\tWHY")
		for _, f := range foreign {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", f.Label, hex.EncodeToString(f.ID), f.Class, f.Why)
		}
		return tw.Flush()
	}
	return nil
}

func restricted(b bool) string {
	if b {
		return "yes"
	}
	return "NO"
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func enforced(b bool) string {
	if b {
		return "enforced"
	}
	return "MISSING"
}

func (c *cli) cmdKEKDestroy(ctx context.Context, args []string) error {
	fs := c.newFlags(kekDestroySpec)
	label := fs.String("label", "", "the KEK's `NAME`")
	idHex := fs.String("id", "", "destroy only the version with this `HEX` id")
	yes := fs.Bool("yes", false, "do not ask")
	c.pinFlags(fs, false)
	operands, err := c.parse(fs, args)
	if err != nil {
		return err
	}
	if err := noOperands(fs, operands); err != nil {
		return err
	}
	if *label == "" {
		return usagef(fs.spec.path, "kek destroy needs --label NAME")
	}
	var id []byte
	if *idHex != "" {
		if id, err = hex.DecodeString(*idHex); err != nil || len(id) == 0 {
			return usagef(fs.spec.path, "--id %q is not a hex KEK id", *idHex)
		}
	}
	// The question goes to the controlling terminal, as PIN prompts do, so
	// "hsmkeys kek destroy ... < file" still asks there.
	if !*yes && !canPrompt() {
		return &usageError{msg: "kek destroy asks before destroying, and there is no terminal to ask on", hint: "add --yes if you mean it"}
	}
	a, err := c.openAdmin(ctx, false)
	if err != nil {
		return err
	}
	defer a.Close()
	victims, err := kekVersions(ctx, a, *label, id)
	if err != nil {
		return err
	}
	if !*yes {
		ok, err := confirm(ctx, destroyQuestion(victims))
		if err != nil {
			return err
		}
		if !ok {
			return errors.New("nothing destroyed")
		}
	}
	return c.destroyKEKs(ctx, a, victims)
}

// kekVersions finds the versions of label to destroy: the one with id, or all.
func kekVersions(ctx context.Context, a *provider.Admin, label string, id []byte) ([]*provider.KEK, error) {
	all, err := a.KEKs(ctx)
	if err != nil {
		return nil, err
	}
	var out []*provider.KEK
	for _, k := range all {
		if k.Label == label && (id == nil || bytes.Equal(k.ID, id)) {
			out = append(out, k)
		}
	}
	if len(out) > 0 {
		return out, nil
	}
	if id != nil {
		return nil, kekNotFound(fmt.Errorf("%w: kek %q with id %s", provider.ErrNotFound, label, hex.EncodeToString(id)))
	}
	return nil, kekNotFound(fmt.Errorf("%w: kek %q", provider.ErrNotFound, label))
}

func destroyQuestion(ks []*provider.KEK) string {
	var versions []string
	for _, k := range ks {
		versions = append(versions, fmt.Sprintf("v%d (%s)", k.Version, hex.EncodeToString(k.ID)))
	}
	return fmt.Sprintf("destroy kek %q %s? keys wrapped only under it can never be imported again", ks[0].Label, strings.Join(versions, ", "))
}

func (c *cli) destroyKEKs(ctx context.Context, a *provider.Admin, ks []*provider.KEK) error {
	type destroyed struct {
		Label   string `json:"label"`
		Version int    `json:"version"`
		ID      string `json:"id"`
	}
	var done []destroyed
	for _, k := range ks {
		if err := a.DestroyKEK(ctx, k.ID); err != nil {
			return fmt.Errorf("kek %q version %d: %w", k.Label, k.Version, err)
		}
		done = append(done, destroyed{k.Label, k.Version, hex.EncodeToString(k.ID)})
		if !c.json {
			fmt.Fprintf(c.stdout, "destroyed kek %q version %d (id %s)\n", k.Label, k.Version, hex.EncodeToString(k.ID))
		}
	}
	if c.json {
		return c.writeJSON(done)
	}
	return nil
}
