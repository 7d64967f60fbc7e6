from rest_framework.authentication import BaseAuthentication


class AdminKeyAuthentication(BaseAuthentication):
    pass
