"""stub"""
from .base import AppScreen
class S(AppScreen):
    NAME = "runs"
SCREEN = S
