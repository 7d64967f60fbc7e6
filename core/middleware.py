"""Control-plane middleware shared by every app."""

from __future__ import annotations

from django.http import Http404, HttpRequest, HttpResponse
from django.utils.deprecation import MiddlewareMixin
from django.views.defaults import page_not_found

from core.errors import NotFound

# The APIs render their own error body (DRF's exception handler, the gateway's OpenAI envelope).
_API_PREFIXES = ("/api/", "/v1/")


class NotFoundMiddleware(MiddlewareMixin):
    """A `NotFound` a page lets escape answers Django's 404 page, as `Http404` did: services and
    selectors raise the domain error, the dashboard and the admin keep their 404s."""

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, NotFound) or request.path.startswith(_API_PREFIXES):
            return None
        return page_not_found(request, Http404(exception.message))
