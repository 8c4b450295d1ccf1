package p11

// LibraryInfo is the module's C_GetInfo answer (PKCS#11 v2.40 base §5.4,
// CK_INFO), text without its blank padding.
type LibraryInfo struct {
	CryptokiMajor, CryptokiMinor byte
	Manufacturer                 string
	Description                  string
	LibraryMajor, LibraryMinor   byte
}

// Info is C_GetInfo.
func (m *Module) Info() (LibraryInfo, error) {
	in, err := m.ctx.GetInfo()
	if err != nil {
		return LibraryInfo{}, wrapErr("C_GetInfo", err)
	}
	return LibraryInfo{
		CryptokiMajor: in.CryptokiVersion.Major, CryptokiMinor: in.CryptokiVersion.Minor,
		Manufacturer: in.ManufacturerID, Description: in.LibraryDescription,
		LibraryMajor: in.LibraryVersion.Major, LibraryMinor: in.LibraryVersion.Minor,
	}, nil
}
