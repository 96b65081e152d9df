"""stub"""
from .base import AppScreen
class S(AppScreen):
    NAME = "launch"
SCREEN = S
