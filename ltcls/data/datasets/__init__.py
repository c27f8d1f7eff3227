"""Dataset builders, one module per dataset family; each registers its names (declared in
:mod:`ltcls.registries`)."""
