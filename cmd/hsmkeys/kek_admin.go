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
half, whether its wrap and unwrap templates are in force, and the problems
that make hsmkeys refuse it, and its RFC 7512 object URI, which --kek
takes wherever it takes a name (the URI names that exact version). Needs
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
destroyed version can never be opened again. Asks on the terminal first;
without a terminal, --yes is required. Needs the user PIN.`,
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
	if c.json {
		out := make([]kekJSON, len(keks))
		for i, k := range keks {
			out[i] = kekToJSON(k)
			out[i].URI = k.URI(a.Token())
		}
		return c.writeJSON(out)
	}
	if len(keks) == 0 {
		fmt.Fprintf(c.stderr, "hsmkeys: no KEK on token %s; make one with 'hsmkeys kek create --label NAME'\n", a.Token())
		return nil
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tVERSION\tID\tTYPE\tTRUSTED\tUNWRAP\tTEMPLATES\tPROBLEMS\tURI")
	for _, k := range keks {
		problems := "-"
		if len(k.Problems) > 0 {
			problems = strings.Join(k.Problems, "; ")
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", k.Label, k.Version, hex.EncodeToString(k.ID), kekTypeName(k),
			yesNo(k.Trusted), yesNo(k.CanUnwrap()), enforced(templatesEnforced(k)), problems, k.URI(a.Token()))
	}
	return tw.Flush()
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
	if !*yes && !c.stdinIsTerminal() {
		return &usageError{msg: "kek destroy asks before destroying, and stdin is not a terminal", hint: "add --yes if you mean it"}
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
