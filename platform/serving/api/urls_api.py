from rest_framework.routers import SimpleRouter

from serving.api import endpoints

router = SimpleRouter(trailing_slash="/?")
router.register(r"orgs/(?P<org>[a-z0-9-]+)/endpoints", endpoints.EndpointViewSet, basename="endpoints")
urlpatterns = router.urls
