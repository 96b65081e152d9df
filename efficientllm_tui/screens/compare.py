"""stub"""
from .base import AppScreen
class S(AppScreen):
    NAME = "compare"
SCREEN = S
