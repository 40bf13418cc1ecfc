"""Getting faces into the gallery: folder scanning, the prepare stage, enrollment and re-embedding
(:mod:`gallery.enroll.reembed`)."""
from gallery.enroll.enroll import EnrolledPhoto, EnrollReport, enroll_folder, enroll_images, enroll_jobs
from gallery.enroll.scan import PhotoJob, scan_people_dir

__all__ = ["EnrolledPhoto", "EnrollReport", "PhotoJob", "enroll_folder", "enroll_images", "enroll_jobs",
           "scan_people_dir"]
