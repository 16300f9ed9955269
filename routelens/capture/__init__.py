"""Capture: hook the routers of a Hugging Face MoE model and record every token's routing."""

from .adapters import ModelRouting, RouterOutput, RouterSite, RoutingRule, find_router_sites

__all__ = ["find_router_sites", "RouterSite", "RouterOutput", "RoutingRule", "ModelRouting"]
