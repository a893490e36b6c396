from rest_framework.routers import SimpleRouter

from fine_tuning.api import management

router = SimpleRouter(trailing_slash="/?")
router.register(r"orgs/(?P<org>[a-z0-9-]+)/files", management.FileViewSet, basename="files")
router.register(r"orgs/(?P<org>[a-z0-9-]+)/datasets", management.DatasetViewSet, basename="datasets")
router.register(
    r"orgs/(?P<org>[a-z0-9-]+)/datasets/(?P<dataset_id>[^/]+)/versions",
    management.DatasetVersionViewSet,
    basename="dataset-versions",
)
urlpatterns = router.urls
