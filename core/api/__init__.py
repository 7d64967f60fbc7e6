"""DRF building blocks every app's management API shares: base views, serializers, pagination,
the bounded JSON parser and the exception handler. Nothing here knows tenants; the tenant-scoped
view and admin-key authentication live in `tenants.api`."""
