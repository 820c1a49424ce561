"""The fields of KubeRay's `RayService` (apiVersion ray.io/v1) down to the pod templates, with
their types, as KubeRay 1.4+ defines them (`ray-operator/apis/ray/v1/rayservice_types.go`
and `raycluster_types.go`, which generate its published `ray.io_rayservices` CRD). Stricter
than the CRD where that is what a user needs: unknown fields are errors (the API server
would drop a misspelled `minReplica` silently), enums are enums (the CRD types
`upgradeStrategy.type` as a plain string), and the fields KubeRay marks deprecated and ignores
are refused. Pod templates and Services are Kubernetes' own types: kubernetes-validate checks
those."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

Int32 = Annotated[StrictInt, Field(ge=0, le=2**31 - 1)]
Percent = Annotated[StrictInt, Field(ge=0, le=100)]
KubernetesObject = dict[str, Any]  # checked by kubernetes-validate


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)


class AutoscalerOptions(_Strict):
    resources: KubernetesObject | None = None
    image: StrictStr | None = None
    imagePullPolicy: Literal["Always", "Never", "IfNotPresent"] | None = None
    securityContext: KubernetesObject | None = None
    idleTimeoutSeconds: Int32 | None = None
    upscalingMode: Literal["Default", "Aggressive", "Conservative"] | None = None
    version: Literal["v1", "v2"] | None = None
    env: list[KubernetesObject] | None = None
    envFrom: list[KubernetesObject] | None = None
    volumeMounts: list[KubernetesObject] | None = None


class HeadGroupSpec(_Strict):
    template: KubernetesObject
    rayStartParams: dict[str, StrictStr] | None = None
    serviceType: Literal["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"] | None = None
    headService: KubernetesObject | None = None
    enableIngress: StrictBool | None = None


class ScaleStrategy(_Strict):
    workersToDelete: list[StrictStr] | None = None


class WorkerGroupSpec(_Strict):
    groupName: StrictStr
    minReplicas: Int32
    maxReplicas: Int32
    replicas: Int32 | None = None
    idleTimeoutSeconds: Int32 | None = None
    rayStartParams: dict[str, StrictStr] | None = None
    template: KubernetesObject
    scaleStrategy: ScaleStrategy | None = None
    numOfHosts: Annotated[StrictInt, Field(ge=1)] | None = None
    suspend: StrictBool | None = None


class RayClusterUpgradeStrategy(_Strict):
    type: Literal["Recreate", "None"] | None = None


class RayClusterSpec(_Strict):
    rayVersion: StrictStr | None = None
    headGroupSpec: HeadGroupSpec
    workerGroupSpecs: list[WorkerGroupSpec] | None = None
    enableInTreeAutoscaling: StrictBool | None = None
    autoscalerOptions: AutoscalerOptions | None = None
    headServiceAnnotations: dict[str, StrictStr] | None = None
    gcsFaultToleranceOptions: KubernetesObject | None = None
    upgradeStrategy: RayClusterUpgradeStrategy | None = None
    suspend: StrictBool | None = None
    managedBy: Literal["ray.io/kuberay-operator", "kueue.x-k8s.io/multikueue"] | None = None


class ClusterUpgradeOptions(_Strict):
    gatewayClassName: StrictStr
    stepSizePercent: Percent | None = None
    intervalSeconds: Int32 | None = None
    maxSurgePercent: Percent | None = None


class RayServiceUpgradeStrategy(_Strict):
    type: Literal["NewCluster", "NewClusterWithIncrementalUpgrade", "None"] | None = None
    clusterUpgradeOptions: ClusterUpgradeOptions | None = None


class RayServiceSpec(_Strict):
    serveConfigV2: StrictStr
    rayClusterConfig: RayClusterSpec
    upgradeStrategy: RayServiceUpgradeStrategy | None = None
    rayClusterDeletionDelaySeconds: Int32 | None = None
    excludeHeadPodFromServeSvc: StrictBool | None = None
    serveService: KubernetesObject | None = None


class Metadata(_Strict):
    name: StrictStr = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)
    namespace: StrictStr | None = None
    labels: dict[str, StrictStr] | None = None
    annotations: dict[str, StrictStr] | None = None


class RayService(_Strict):
    apiVersion: Literal["ray.io/v1"]
    kind: Literal["RayService"]
    metadata: Metadata
    spec: RayServiceSpec
